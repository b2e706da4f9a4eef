"""A scenario as a Mesa 3 model (``sim.mesa``), so a Mesa user keeps ``DataCollector`` and ``batch_run``.

The model wraps one world of the batched engine (``sim.build(scenario, worlds=1)``): ``model.step()`` runs
one engine step, and each Mesa agent mirrors one population row, reading its values from the engine's
state rather than holding a copy (agents are rows; nothing here loops over agents to step them). With the
same scenario and seed, the model's trajectory is ``sim.run``'s, bit for bit.

    import mesa, sim
    model = sim.mesa.ValuesimModel("scenarios/deffuant_clusters.yaml", overrides=["population.people.count=200"])
    collector = mesa.DataCollector(model_reporters={"clusters": lambda m: m.reading("clusters")},
                                   agent_reporters={"values": "values"})
    for _ in range(20):
        model.step()
        collector.collect(model)

    mesa.batch_run(sim.mesa.ValuesimModel, {"scenario": path, "seed": range(4)}, max_steps=50)

Needs the ``mesa`` extra (``pip install 'valuesim[mesa]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ScenarioError

try:
    import mesa
except ImportError:  # the optional dependency names its extra
    raise ImportError("sim.mesa needs Mesa 3: pip install 'valuesim[mesa]'") from None


class ValueAgent(mesa.Agent):
    """One population row of the engine's world: ``index`` (the agent's row), ``group``, ``kind``."""

    def __init__(self, model: "ValuesimModel", index: int, group: str, kind: str):
        super().__init__(model)
        self.index = index
        self.group = group
        self.kind = kind

    @property
    def values(self) -> tuple[float, ...]:
        """The agent's current values, one per dimension (``model.dimensions``), read from its row."""
        return tuple(self.model.values[self.index].tolist())

    def value(self, dimension: str) -> float:
        return float(self.model.values[self.index, self.model.dimensions.index(dimension)])

    @property
    def active(self) -> bool:
        return bool(self.model._active[self.index])


class ValuesimModel(mesa.Model):
    """A scenario (a path or a loaded :class:`sim.Scenario`) as a Mesa model of one world.

    ``seed`` overrides the scenario's (and seeds Mesa's own ``random`` and ``rng``, which valuesim does not
    draw from); ``overrides`` are ``--set`` strings for a path. ``model.running`` turns False at the
    scenario's ``steps`` or when the scenario's stop tolerance is met, as ``valuesim run`` stops.
    ``model.datacollector`` collects after every step (and at the start) each whole-population scalar metric
    and each agent's group and values, which is what ``mesa.batch_run`` reads.
    """

    def __init__(self, scenario: Any, seed: int | None = None, overrides: Sequence[str] = (),
                 device: str = "cpu", rng: Any = None):
        from ..config.build import build_simulation
        from ..config.scenario import Scenario, load_scenario

        if not isinstance(scenario, Scenario):
            scenario = load_scenario(Path(scenario), list(overrides))
        elif overrides:
            raise ValueError("overrides apply when the scenario is given as a path")
        seed = scenario.spec.seed if seed is None else int(seed)
        super().__init__(seed=seed) if rng is None else super().__init__(rng=rng)
        self.scenario = scenario
        self.simulation = build_simulation(scenario, worlds=1, device=device, seed=seed)
        world = self.simulation.world
        self.dimensions = list(world.space.dimensions)
        self.steps_total = scenario.spec.steps
        self._refresh()
        for group in world.groups:
            for index in range(group.start, group.start + group.size):
                ValueAgent(self, index, group.name, group.kind)
        self._by_index = sorted(self.agents, key=lambda a: a.index)
        # what batch_run reads: every whole-population scalar reading, and each agent's values by dimension
        scalars = [r["metric"] for r in self.readings() if r["group"] == "all" and r["dimension"] is None]
        self.datacollector = mesa.DataCollector(
            model_reporters={name: (lambda m, name=name: m.reading(name)) for name in scalars},
            agent_reporters={"group": "group", **{dim: (lambda a, j=j: float(a.model.values[a.index, j]))
                                                  for j, dim in enumerate(self.dimensions)}})
        self.datacollector.collect(self)

    # the engine's state, as Mesa code reads it
    def _refresh(self) -> None:
        state = self.simulation.state
        self.values = state.values[0].detach().cpu().numpy()  # [N, K], world 0; agents read their rows here
        self._active = state.active[0].detach().cpu().numpy()

    @property
    def step_count(self) -> int:
        """The engine's step (Mesa's ``model.steps`` counts calls of ``step`` the same way)."""
        return int(self.simulation.state.step)

    def agent(self, index: int) -> ValueAgent:
        return self._by_index[index]

    def step(self) -> None:
        """One engine step of the world (protocols, expression, dynamics, alignment, metrics)."""
        if not self.running:
            return
        self.simulation.step()
        self._refresh()
        self.running = self.step_count < self.steps_total and not self.simulation.converged
        self.datacollector.collect(self)

    def readings(self) -> list[dict[str, Any]]:
        """The scenario's metrics now, as tidy rows (metric, group, dimension, value), as the run log has them."""
        rows = []
        for reading in self.simulation.observe():
            rows.extend(_tidy(reading))
        return rows

    def reading(self, metric: str, group: str = "all", dimension: str | None = None) -> float:
        """One metric value now (``model.reading("clusters")``, ``model.reading("mean_values", "people", "a")``),
        for a ``DataCollector`` model reporter."""
        for row in self.readings():
            if row["metric"] == metric and row["group"] == group and row["dimension"] == dimension:
                return row["value"]
        raise ScenarioError(f"no reading {metric!r} for group {group!r}" +
                            (f", dimension {dimension!r}" if dimension else "") + " (is it in the scenario's metrics?)")

    def network(self):
        """The influence network as a networkx Graph over agent indices."""
        import networkx as nx

        net = self.simulation.world.network
        graph = nx.Graph()
        graph.add_nodes_from(range(self.simulation.world.n))
        graph.add_edges_from(_edges(net))
        return graph


def _edges(net) -> list[tuple[int, int]]:
    """Each undirected edge once (source < target), as ``network.parquet`` holds them."""
    from ..runs.tables import network_table

    table = network_table(net)
    return list(zip(table.column("source").to_pylist(), table.column("target").to_pylist()))


def _tidy(reading) -> list[dict[str, Any]]:
    """A metric reading of world 0 as tidy rows (metric, group, dimension, value), as the run log writes it."""
    value = reading.value.detach().to("cpu", torch.float64)[0]  # [S, D]
    return [{"metric": reading.metric, "group": scope, "dimension": dim, "value": float(value[i, j])}
            for i, scope in enumerate(reading.scopes) for j, dim in enumerate(reading.dimensions)]


def model(scenario: Any, **kwargs) -> ValuesimModel:
    """``sim.mesa.model(path, seed=..., overrides=[...])``: the scenario as a :class:`ValuesimModel`."""
    return ValuesimModel(scenario, **kwargs)


__all__ = ["ValuesimModel", "ValueAgent", "model"]
