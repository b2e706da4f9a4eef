"""Reading a run log back. Analysis reads only the run directory, never the code that produced it.

Beyond the tables as they are stored, :class:`RunView` gives the two joins most questions need:
``values(with_agents=True)`` (each snapshot row with its agent's attributes) and ``changes()`` (final minus
initial values per agent and world, with its attributes and how far it moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from ..errors import RunDirError
from .runlog import (STATIC_TABLES, TABLES, part_step, lock_held, pid_alive, read_events, read_manifest,
                     read_parquet)
from .tables import read_metadata


@dataclass(frozen=True)
class RunView:
    """One run directory: its manifest, resolved scenario, tables and events."""

    path: Path
    manifest: dict[str, Any]

    @property
    def status(self) -> str:
        """The manifest's status, except that a ``running`` run whose process is gone reads ``interrupted``
        (a killed process cannot mark itself; ``valuesim resume`` finishes it)."""
        status = self.manifest["status"]
        if status == "running":
            held = lock_held(self.path)  # the lock tells best; a run of an older valuesim has only its pid
            alive = held if held is not None else pid_alive(self.manifest.get("pid"), self.manifest.get("host"))
            if not alive:
                return "interrupted"
        return status

    @property
    def scenario(self) -> dict[str, Any]:
        file = self.path / "scenario.yaml"
        try:
            data = yaml.safe_load(file.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{file}: missing (the run directory is incomplete)") from None
        except (UnicodeDecodeError, yaml.YAMLError):
            raise RunDirError(f"{file}: not a YAML scenario (the file is corrupt)") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{file}: not a YAML scenario (the file is corrupt)")
        return data

    def table(self, name: str, as_: str = "pandas"):
        """``metrics``, ``values``, ``agents`` or ``network`` as a pandas DataFrame (``as_="pandas"``) or an
        Arrow table (``"arrow"``)."""
        if name not in TABLES + STATIC_TABLES:
            raise RunDirError(f"unknown table {name!r} (tables: {', '.join(TABLES + STATIC_TABLES)})")
        file = self.path / f"{name}.parquet"
        if name in STATIC_TABLES and not file.is_file():
            raise RunDirError(f"{file}: missing (a run of a valuesim older than the agents and network tables?)")
        if file.is_file():
            table = read_parquet(file)
        else:  # a run still going: read the parts written so far
            parts = sorted((self.path / "parts").glob(f"{name}-*.parquet"), key=part_step)
            table = pa.concat_tables([read_parquet(p) for p in parts]) if parts else None
            if table is None:
                raise RunDirError(f"{self.path}: no {name} rows yet")
        if as_ == "arrow":
            return table
        if as_ == "pandas":
            return table.to_pandas()
        raise ValueError(f"as_ must be 'pandas' or 'arrow', got {as_!r}")

    def metrics(self, as_: str = "pandas"):
        """Tidy rows: world, step, metric, group, dimension, value (``metric_catalogue`` says what each is)."""
        return self.table("metrics", as_)

    def values(self, as_: str = "pandas", with_agents: bool = False):
        """Snapshots: world, step, agent, group, one column per value dimension (in ``dimensions`` order).

        ``with_agents=True`` adds each agent's attributes from ``agents.parquet`` (kind, policy, stream,
        confidence, rate, anchoring, zealot, degree, logged).
        """
        values = self.table("values", "pandas")
        if with_agents:
            values = values.merge(self._attributes(), on=self._agent_keys(), how="left", validate="many_to_one")
        return _as(values, as_)

    def agents(self, as_: str = "pandas"):
        """One row per agent, or per world and agent when they differ between worlds (then with ``world`` and
        ``stream``): agent, group, kind, policy, confidence, rate, anchoring, zealot, degree, logged."""
        return self.table("agents", as_)

    def network(self, as_: str = "pandas", world: int | None = None):
        """The edge list, each undirected edge once: source < target (agent indices).

        One graph shared by all worlds, or (``network.independent: true``; the manifest's
        ``network.shared_by_worlds`` false) each world's own edges, with a leading ``world`` column.
        ``world=b`` gives world b's edges either way, as source and target.
        """
        if world is None:
            return self.table("network", as_)
        table = self.table("network", "arrow")
        if "world" in table.schema.names:
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table.column("world"), world)).drop_columns(["world"])
        return table if as_ == "arrow" else _as(table.to_pandas(), as_)

    @property
    def dimensions(self) -> list[str]:
        """The value dimensions in their order (the column order of ``values``)."""
        space = self.manifest.get("value_space")
        if space:
            return list(space["dimensions"])
        return list(read_metadata(self.values("arrow").schema).get("value_space", {}).get("dimensions", []))

    @property
    def metric_catalogue(self) -> dict[str, dict[str, Any]]:
        """Each reading name of ``metrics`` -> ``{"metric": listed metric, "shape": ..., "meaning": ...}``."""
        out = {}
        for entry in self.manifest.get("metric_catalogue") or []:
            for name, about in (entry.get("writes") or {}).items():
                out[name] = {"metric": entry["metric"], **about}
            for name in entry.get("observed") or []:
                out[name] = {"metric": entry["metric"], "shape": None, "meaning": None}
        return out

    def changes(self, start: int | None = None, end: int | None = None, as_: str = "pandas"):
        """Final minus initial values of every logged agent in every world, with its attributes.

        One row per world and agent: world, agent, group, the agent's attributes, then per dimension the
        signed change ``x(end) - x(start)``, and ``moved``, the Euclidean norm of the change. ``start`` and
        ``end`` are snapshot steps (default: the first and the last).
        """
        values = self.table("values", "pandas")
        steps = values["step"]
        start = int(steps.min()) if start is None else start
        end = int(steps.max()) if end is None else end
        for name, step in (("start", start), ("end", end)):
            if not (steps == step).any():
                raise RunDirError(f"{self.path}: no value snapshot at step {step} ({name}; snapshots: "
                                  f"{', '.join(map(str, sorted(steps.unique())[:12]))}, ...)")
        dims = self.dimensions
        keys = ["world", "agent"]
        first = values[steps == start].set_index(keys)[dims]
        last = values[steps == end].set_index(keys)
        change = last[dims] - first[dims]
        change.insert(0, "group", last["group"])
        change["moved"] = (change[dims] ** 2).sum(axis=1) ** 0.5
        change = change.reset_index().merge(self._attributes(), on=self._agent_keys(), how="left",
                                            validate="many_to_one")
        order = [*keys, "group", *[c for c in self._attributes().columns if c not in keys], *dims, "moved"]
        return _as(change[order], as_)

    def _agent_keys(self) -> list[str]:
        return ["world", "agent"] if "world" in self.agents("arrow").schema.names else ["agent"]

    def _attributes(self):
        return self.agents().drop(columns=["group"])

    def events(self) -> list[dict[str, Any]]:
        """The events in order; a last line cut short by a kill is skipped."""
        return read_events(self.path / "events.jsonl")

    @property
    def plot(self):
        """The run's figures as matplotlib Figures: ``run.plot.trajectories()``, ``.drift_heatmap()``,
        ``.polarization()``, ``.value_distribution()``, ``.shapley_bars()``, ``.sweep_phase()``
        (:mod:`sim.analysis.plots`)."""
        from ..analysis.plots import Plots

        return Plots(self)


def _as(frame, as_: str):
    if as_ == "pandas":
        return frame
    if as_ == "arrow":
        return pa.Table.from_pandas(frame, preserve_index=False)
    raise ValueError(f"as_ must be 'pandas' or 'arrow', got {as_!r}")


def open_run(path: str | Path) -> RunView:
    """Open a run directory written by ``valuesim run``.

    ``run.values(with_agents=True)`` and ``run.changes()`` are the joins most questions need ("do hubs move
    more?": ``run.changes()[["degree", "moved"]].corr()``); ``run.agents()``, ``run.network()``,
    ``run.dimensions`` and ``run.metric_catalogue`` say who the agents are and what each column means.
    """
    path = Path(path)
    return RunView(path=path, manifest=read_manifest(path))


def list_runs(runs_dir: str | Path = "runs") -> tuple[list[dict[str, Any]], list[str]]:
    """The run directories directly under ``runs_dir``, oldest first, and a warning per folder that has a
    manifest that cannot be read.

    Each run is ``{"run", "path", "scenario", "tag", "status", "seed", "worlds", "steps", "last_step",
    "overrides", "started"}``; ``status`` is as :attr:`RunView.status` tells it (a dead ``running`` run reads
    ``interrupted``).
    """
    folder = Path(runs_dir)
    if not folder.is_dir():
        raise RunDirError(f"{folder}: no such folder of runs")
    rows, warnings = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (path / "manifest.json").is_file():
            continue
        try:
            view = open_run(path)
            status = view.status
        except RunDirError as exc:
            warnings.append(str(exc))
            continue
        m = view.manifest
        rows.append({"run": path.name, "path": str(path), "scenario": m.get("scenario"), "tag": m.get("tag"),
                     "status": status, "seed": m.get("seed"), "worlds": m.get("worlds"), "steps": m.get("steps"),
                     "last_step": m.get("last_step", m.get("step")), "overrides": m.get("overrides") or [],
                     "started": m.get("started")})
    rows.sort(key=lambda r: (str(r["started"] or ""), r["run"]))
    return rows, warnings
