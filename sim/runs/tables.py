"""What the run log says about itself: who the agents are, the network, the value space, the metric catalogue
and the schema of every table.

The same description goes into ``manifest.json`` (``value_space``, ``metric_catalogue``, ``tables``,
``values_sample``, ``network``) and into each Parquet file's schema metadata (key ``valuesim``, JSON), so a
table copied out of its run directory still tells its dimension order and which metric wrote ``variance``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import torch

from ..config.schema import RUN_LOG_COLUMNS

METADATA_KEY = b"valuesim"

# Every column of every table, with what it holds. A value dimension is a column of values.parquet too; its
# names may not be any of RUN_LOG_COLUMNS (the scenario schema refuses them).
COLUMNS: dict[str, dict[str, str]] = {
    "metrics": {
        "world": "world index b (0..B-1)",
        "step": "step of the observation (0: the initial state)",
        "metric": "the reading's name: a sub-metric of one listed metric (see metric_catalogue)",
        "group": "scope: a group name, or 'all' for the whole population",
        "dimension": "value dimension for a per-dimension reading, null for one number per scope",
        "value": "the reading (float64; NaN where undefined)",
    },
    "values": {
        "world": "world index b (0..B-1)",
        "step": "step of the snapshot (0: the initial values)",
        "agent": "agent index (row of the agent axis), the key into agents.parquet",
        "group": "the agent's group",
        "<dimension>": "one float32 column per value dimension, in value_space.dimensions order, each in [0, 1]",
    },
    "agents": {
        "world": "world index b (only when agents differ between worlds: agents.per_world)",
        "stream": "the world's random stream (simulation.rng.stream; sim.build(streams=[s]) rebuilds it alone)",
        "agent": "agent index",
        "group": "the agent's group",
        "kind": "the group's kind (human, llm, ai, rl)",
        "policy": "the policy the agent acts by in that world (its group's own, or the group's baseline)",
        "confidence": "bounded-confidence radius epsilon",
        "rate": "convergence rate mu",
        "anchoring": "Friedkin-Johnsen weight on the initial values",
        "zealot": "whether the agent's values never change",
        "degree": "number of neighbours in the network (in the world's own graph when graphs differ)",
        "logged": "whether the agent's values are in values.parquet (see values_sample)",
    },
    "network": {
        "world": "world index b (only when worlds have their own graphs: network.shared_by_worlds false)",
        "source": "one end of an undirected edge (agent index, the smaller one)",
        "target": "the other end (agent index, the larger one)",
    },
}
KEYS = {"metrics": ["world", "step", "metric", "group", "dimension"], "values": ["world", "step", "agent"],
        "agents": ["world", "agent"], "network": ["world", "source", "target"]}
assert {c for t in ("values", "agents", "network") for c in COLUMNS[t] if not c.startswith("<")} \
    <= set(RUN_LOG_COLUMNS), "a key column of the run log is missing from the reserved names"


def table_schemas(dimensions: tuple[str, ...], agents_per_world: bool,
                  network_per_world: bool = False) -> dict[str, dict[str, Any]]:
    """The ``tables`` entry of the manifest: each table's file, key columns and columns with their meaning."""
    out = {}
    for name, columns in COLUMNS.items():
        columns = dict(columns)
        keys = list(KEYS[name])
        if name == "values":
            del columns["<dimension>"]
            columns.update({d: f"value dimension {d!r} in [0, 1]" for d in dimensions})
        if name == "agents" and not agents_per_world:
            del columns["world"], columns["stream"]
            keys = ["agent"]
        if name == "network" and not network_per_world:
            del columns["world"]
            keys = ["source", "target"]
        out[name] = {"file": f"{name}.parquet", "keys": keys, "columns": columns}
    return out


def with_metadata(table: pa.Table, description: dict[str, Any]) -> pa.Table:
    """``table`` with ``description`` (JSON) under the ``valuesim`` key of its schema metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(description).encode()
    return table.replace_schema_metadata(metadata)


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """What :func:`with_metadata` stored, or ``{}``."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


# ---------------------------------------------------------------- agents and network


def agents_per_world(simulation) -> bool:
    """Whether the agents' attributes differ between worlds (then agents.parquet has a row per world and agent).

    A single world counts as "per world", so that its stream is in the table; so do worlds with their own
    graphs (their agents' degrees differ).
    """
    if simulation.world.b == 1 or not simulation.world.network.shared:
        return True
    return any(bool((t != t[:1]).any()) for t in _per_world_attributes(simulation) if t.shape[0] > 1)


def _per_world_attributes(simulation) -> list[torch.Tensor]:
    p = simulation.world.params
    return [p.confidence, p.rate, p.anchoring, p.zealot, simulation.state.own_policy]


def agents_table(simulation, logged: torch.Tensor) -> pa.Table:
    """One row per agent (per world and agent when they differ between worlds): see ``COLUMNS["agents"]``."""
    world, state, spec = simulation.world, simulation.state, simulation.scenario.spec
    b, n = world.b, world.n
    per_world = agents_per_world(simulation)
    rows = b if per_world else 1
    group_index = world.group_index.cpu()
    names = [g.name for g in world.groups]
    own = [g.policy.name for g in spec.population]
    baseline = [(g.baseline.name if g.baseline is not None else "honest") for g in spec.population]
    own_policy = state.own_policy.cpu()[:rows].expand(rows, n)
    policy_names = sorted(set(own) | set(baseline))
    own_code = torch.tensor([policy_names.index(p) for p in own])[group_index]
    base_code = torch.tensor([policy_names.index(p) for p in baseline])[group_index]
    policy = torch.where(own_policy, own_code, base_code)
    in_values = torch.zeros(n, dtype=torch.bool)
    in_values[logged.cpu()] = True

    def per_agent(t: torch.Tensor):  # [B or 1, N] -> [rows * N]
        return t.cpu()[:rows].expand(rows, n).reshape(-1).numpy()

    columns: dict[str, pa.Array] = {}
    if per_world:
        columns["world"] = pa.array(torch.arange(rows, dtype=torch.int32).repeat_interleave(n).numpy())
        columns["stream"] = pa.array(simulation.rng.stream.cpu()[:rows].to(torch.int64)
                                     .repeat_interleave(n).numpy())
    columns["agent"] = pa.array(torch.arange(n, dtype=torch.int64).repeat(rows).numpy())
    columns["group"] = pa.DictionaryArray.from_arrays(
        pa.array(group_index.repeat(rows).numpy().astype("int32")), pa.array(names))
    kinds = sorted({g.kind for g in world.groups})
    kind_code = torch.tensor([kinds.index(g.kind) for g in world.groups])[group_index]
    columns["kind"] = pa.DictionaryArray.from_arrays(pa.array(kind_code.repeat(rows).numpy().astype("int32")),
                                                     pa.array(kinds))
    columns["policy"] = pa.DictionaryArray.from_arrays(pa.array(policy.reshape(-1).numpy().astype("int32")),
                                                       pa.array(policy_names))
    for name in ("confidence", "rate", "anchoring", "zealot"):
        columns[name] = pa.array(per_agent(getattr(world.params, name)))
    columns["degree"] = pa.array(per_agent(world.network.world_degree().to(torch.int64)))
    columns["logged"] = pa.array(in_values.repeat(rows).numpy())
    return pa.table(columns)


def network_table(network) -> pa.Table:
    """Each undirected edge once, ``source < target``, sorted; with per-world graphs, world b's edges for each
    world b in turn, in a leading ``world`` column."""
    if network.shared:
        return _edges(network)
    graphs = network.graph.cpu()
    edges = [_edges(network.graph_at(g)) for g in range(network.graphs)]  # once per graph, not per world
    tables = [edges[g] for g in graphs.tolist()]
    world = torch.repeat_interleave(torch.arange(graphs.numel(), dtype=torch.int32),
                                    torch.tensor([t.num_rows for t in tables]))
    joined = pa.concat_tables(tables)
    return pa.table({"world": pa.array(world.numpy()), "source": joined.column("source"),
                     "target": joined.column("target")})


def _edges(network) -> pa.Table:
    rows, col = network.rows().cpu(), network.col.cpu()
    keep = rows < col
    return pa.table({"source": pa.array(rows[keep].to(torch.int64).numpy()),
                     "target": pa.array(col[keep].to(torch.int64).numpy())})


def network_manifest(spec, network) -> dict[str, Any]:
    """The manifest's ``network``: the generator, ``independent`` as asked, whether one graph is shared by every
    world, how many graphs there are and their undirected edges (one number with one graph, else per world)."""
    shared = network.shared
    if shared:
        edges = network.num_edges
    else:
        per_graph = network.edges_per_graph()
        edges = [per_graph[g] for g in network.graph.tolist()]
    out = {"generator": spec.generator, "independent": spec.independent, "shared_by_worlds": shared,
           "graphs": network.graphs, "edges": edges, "directed": False, "file": "network.parquet"}
    if spec.independent:
        out["seeded_by"] = ("run seed and the world's stream (worlds on one stream share a graph; "
                            "sim.build(scenario, streams=[s]) rebuilds stream s's)")
    return out


def values_sample(n: int, logged: torch.Tensor) -> dict[str, Any]:
    kept = int(logged.numel())
    how = ("every agent" if kept == n else
           "a uniform sample without replacement fixed by the seed (stream of world 0, purpose "
           "log/values_sample): the same agents in every world and snapshot, agents.parquet column 'logged'")
    return {"kept": kept, "agents": n, "how": how}


# ---------------------------------------------------------------- the metric catalogue


def metric_catalogue(simulation) -> list[dict[str, Any]]:
    """For each listed metric: its plugin name, summary, and the readings it writes with their meaning.

    A metric class names its readings in a ``writes`` tuple; each one's meaning (and shape) is its
    ```name`` [shape]: meaning`` entry in the class docstring. A metric without ``writes`` is listed with
    ``writes: null``; :func:`attribute_readings` fills in what it turns out to write.
    """
    out = []
    for name, metric in simulation.metrics:
        doc = " ".join((type(metric).__doc__ or "").split("\n\n")[0].split())
        names = getattr(type(metric), "writes", None)
        entry = {"metric": name, "summary": doc, "writes": None}
        if names is not None:
            entry["writes"] = {w: _meaning(type(metric).__doc__ or "", w) for w in names}
        out.append(entry)
    return out


def attribute_readings(catalogue: list[dict[str, Any]], names: list[str]) -> bool:
    """Enter reading names no metric declared under the one metric without ``writes`` (or, when there is not
    exactly one, under ``unattributed``). Returns whether the catalogue changed."""
    declared = {w for entry in catalogue for w in (entry["writes"] or {})}
    seen = {w for entry in catalogue for w in (entry.get("observed") or [])}
    new = [n for n in dict.fromkeys(names) if n not in declared and n not in seen]
    if not new:
        return False
    open_entries = [e for e in catalogue if e["writes"] is None]
    target = open_entries[0] if len(open_entries) == 1 else None
    if target is None:
        target = next((e for e in catalogue if e["metric"] is None), None)
        if target is None:
            target = {"metric": None, "summary": "readings of a metric that does not declare them (writes)",
                      "writes": None}
            catalogue.append(target)
    target.setdefault("observed", []).extend(new)
    return True


def _meaning(doc: str, name: str) -> dict[str, str | None]:
    match = re.search(rf"``{re.escape(name)}``\s*(\[[^\]]*\])?\s*:\s*(.+?)(?=\n\s*-\s+``|\n\s*\n|\Z)", doc, re.S)
    if match is None:
        return {"shape": None, "meaning": None}
    return {"shape": match.group(1), "meaning": " ".join(match.group(2).split()).rstrip(";.")}
