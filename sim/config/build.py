"""Building a world from a scenario: the scenario's plugins, network, population and streams as tensors.

``build_simulation`` is the one place a :class:`~sim.config.scenario.Scenario`
becomes a :class:`~sim.core.engine.Simulation`; the engine itself knows no
scenario files. It is public as ``sim.build``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .. import registry
from ..core.contracts import NetworkRequest
from ..core.engine import Simulation
from ..core.network import build_network, edges_to_network, stack_networks
from ..core.rng import Streams, network_seed
from ..core.state import AGENT_PARAMETERS, State, World
from ..errors import ScenarioError, ValuesimError
from .budget import check_budget
from .population import agent_params, initial_values, layout
from .scenario import Scenario, instantiate
from .schema import PluginRef


def build_simulation(scenario: Scenario, *, worlds: int | None = None, device: str | torch.device = "cpu",
                     seed: int | None = None, network: np.ndarray | None = None,
                     streams: list[int] | torch.Tensor | None = None,
                     context: dict[str, Any] | None = None, measure: bool = True) -> Simulation:
    """Build the world of ``scenario`` (B = ``worlds`` or the scenario's ``worlds``) on ``device``.

    World b runs on stream b unless ``streams`` names each world's stream
    (then B = len(streams)): ``streams=[3]`` is world 3 of any batch, alone;
    ``streams=[0, 0]`` is a pair of twins.

    ``network`` (an ``[E, 2]`` edge array) replaces the scenario's network,
    for benchmarks that give several tools the very same graph.
    ``context`` carries run-level services to plugins (``world.context``):
    the LLM response cache and its mode. ``measure=False`` skips the
    policies' start-of-run measurements (questionnaires put to a model), for
    checking a scenario without calling anything.
    """
    device = _device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScenarioError("--device cuda was asked for, but this torch build sees no CUDA device "
                            "(see the README for installing a CUDA build of torch)")
    spec = scenario.spec
    run_seed = spec.seed if seed is None else seed
    if streams is not None:
        rng = Streams.of(run_seed, list(streams) if not torch.is_tensor(streams) else streams, device)
        if worlds is not None and worlds != rng.b:
            raise ValueError(f"worlds={worlds} but {rng.b} streams were given")
    else:
        rng = Streams.of(run_seed, worlds or spec.worlds, device)
    if spec.counterfactual:  # a twin of every world on the same stream, without the named groups
        rng = Streams(run_seed, torch.cat([rng.stream, rng.stream]))
    b = rng.b
    per_world = spec.network.independent and network is None
    graphs = int(torch.unique(rng.stream).numel()) if per_world else 1
    check_budget(scenario, b, graphs)  # sizes that cannot fit are refused before anything is allocated
    groups = layout(scenario)
    n = groups[-1].stop
    renetwork = None
    if per_world and max(graphs, spec.worlds) > 1:
        _check_random_network(scenario)
    if per_world:
        renetwork = WorldNetworks(scenario, groups, run_seed, device)
        net = renetwork(rng.stream)
    elif network is None:
        net = _scenario_network(scenario, groups, network_seed(run_seed))
    else:
        net = edges_to_network(n, network)
    init = initial_values(scenario, rng.at(-1))
    params = agent_params(scenario, rng.at(-1))
    policies = [(g.policy.name, instantiate("policies", g.policy)) for g in spec.population]
    baselines = [(ref.name, instantiate("policies", ref))
                 for ref in (g.baseline or PluginRef(name="honest") for g in spec.population)]
    honest = torch.cat([torch.full((grp.size,), getattr(p, "expresses_own_values", False), dtype=torch.bool)
                        for grp, (_, p) in zip(groups, policies)])
    group_index = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([g.size for g in groups]))
    world = World(space=scenario.space, groups=groups, network=net.to(device), params=params.to(device),
                  initial=init.to(device), group_index=group_index.to(device), honest=honest.to(device),
                  context={"seed": run_seed, "base_dir": str(scenario.base_dir), **(context or {})})
    state = State(values=world.initial.clone(), active=torch.ones((b, n), dtype=torch.bool, device=device))
    if spec.counterfactual:
        half = b // 2
        for name in spec.counterfactual:
            state.active[half:, world.group(name).rows] = False
        world = replace(world, twin=torch.cat([torch.arange(half, b), torch.arange(half)]).to(device),
                        counterfactual=(torch.arange(b) >= half).to(device))
    _prepare_policies(scenario, world, policies)
    _prepare_policies(scenario, world, baselines, field="baseline")
    dynamics = [(ref.name, instantiate("dynamics", ref)) for ref in spec.dynamics]
    _check_parameters_used(scenario, [d for _, d in dynamics] + [registry.get("protocols", r.name)
                                                                  for r in spec.protocols])
    simulation = Simulation(scenario=scenario, world=world, state=state, rng=rng, dynamics=dynamics,
                            policies=policies, stop_tolerance=spec.stop.tolerance,
                            metrics=[(ref.name, instantiate("metrics", ref)) for ref in spec.metrics],
                            metric_carry=[None] * len(spec.metrics), baselines=baselines,
                            protocols=[(key, instantiate("protocols", ref))
                                       for key, ref in zip(protocol_keys(spec.protocols), spec.protocols)],
                            alignment=[(key, instantiate("alignment", ref))
                                       for key, ref in zip(protocol_keys(spec.alignment), spec.alignment)],
                            redraw=lambda fresh: (initial_values(scenario, fresh).to(device),
                                                  agent_params(scenario, fresh).to(device)),
                            renetwork=renetwork)
    _prepare_plugins(scenario, world, "dynamics", dynamics)
    _prepare_plugins(scenario, world, "metrics", simulation.metrics)
    _start_protocols(scenario, simulation)
    if measure:
        simulation.measure_at_build()
    return simulation


def protocol_keys(refs: list[PluginRef]) -> list[str]:
    """Each protocol's (alignment rule's) name in ``state.protocols`` (``state.alignment``): its plugin name,
    then ``<name>_2``, ... for repeats."""
    seen: dict[str, int] = {}
    keys = []
    for ref in refs:
        seen[ref.name] = seen.get(ref.name, 0) + 1
        keys.append(ref.name if seen[ref.name] == 1 else f"{ref.name}_{seen[ref.name]}")
    return keys


def _prepare_plugins(scenario: Scenario, world: World, field: str, plugins) -> None:
    """Dynamics and metrics may refuse a world (optional ``prepare(world)``: a file they read, a group they
    name) when it is built, as a scenario error at their entry, rather than at the first step."""
    for i, (name, plugin) in enumerate(plugins):
        prepare = getattr(plugin, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare(world)
        except ScenarioError as exc:
            if exc.location is not None:
                raise
            raise scenario.error(f"{field}[{i}]", f"{name}: {exc}") from None
        except (ValueError, ValuesimError) as exc:
            raise scenario.error(f"{field}[{i}]", f"{name}: {exc}") from None


def _start_protocols(scenario: Scenario, simulation: Simulation) -> None:
    """Each protocol's state at step 0; a protocol refusing the world (a group it needs is missing) is a
    scenario error at its entry."""
    for field, plugins in (("protocols", simulation.protocols), ("alignment", simulation.alignment)):
        for i, (name, _) in enumerate(plugins):
            try:
                simulation.start_protocols(only=name)
            except (ValueError, ValuesimError) as exc:
                raise scenario.error(f"{field}[{i}]", f"{name}: {exc}") from None


def _prepare_policies(scenario: Scenario, world: World, policies, field: str = "policy") -> None:
    """Let each policy refuse a world it cannot serve (optional ``prepare``), as a scenario error."""
    for i, (group, (name, policy)) in enumerate(zip(world.groups, policies)):
        prepare = getattr(policy, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare(world, group)
        except ScenarioError as exc:
            if exc.location is not None:
                raise
            raise scenario.error(f"population[{i}].{field}", f"{name}: {exc}") from None
        except (ValueError, ValuesimError) as exc:  # a policy or its backend refusing this world
            raise scenario.error(f"population[{i}].{field}", f"{name}: {exc}") from None


def _device(name: str | torch.device) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ScenarioError(f"must be cpu, cuda or cuda:<index>, got {str(name)!r}", location="--device")
    return device


class WorldNetworks:
    """The graphs of ``network.independent: true``: one per distinct stream, from ``network_seed(seed, stream)``.

    Called with the worlds' ``[B]`` streams it returns their network (one graph when they all share a
    stream); a graph whose stream is still in use is kept, not rebuilt (``Simulation.reset_worlds`` calls
    it with the new streams, ``Simulation.restore`` with a checkpoint's). A checkpoint therefore stores no
    graph: each is rebuilt from the seed and its stream.
    """

    def __init__(self, scenario: Scenario, groups, seed: int, device: torch.device):
        self.scenario, self.groups, self.seed, self.device = scenario, groups, seed, device
        self.streams: list[int] = []  # the stream of each graph of self.network
        self.network = None  # on the CPU

    def __call__(self, stream: torch.Tensor):
        distinct, graph = torch.unique(stream.cpu(), return_inverse=True)
        keys = distinct.tolist()
        kept = {s: g for g, s in enumerate(self.streams)}
        built = [self.network.graph_at(kept[s]) if s in kept else
                 _scenario_network(self.scenario, self.groups, network_seed(self.seed, s)) for s in keys]
        self.streams, self.network = keys, stack_networks(built, graph)
        return self.network.to(self.device)


def _check_random_network(scenario: Scenario) -> None:
    """``independent: true`` over several worlds asks for graphs that differ: refused for a generator whose graph
    does not depend on the seed (``random = False``: a file, the complete graph), rather than built G times."""
    name = scenario.spec.network.generator
    if not getattr(registry.get("networks", name), "random", True):
        raise scenario.error("network.independent", f"the {name!r} generator is not random, so every world "
                             "would get the same graph; drop independent: true")


def _scenario_network(scenario: Scenario, groups, seed: int):
    spec = scenario.spec.network
    generator = instantiate("networks", PluginRef(name=spec.generator, params=spec.params))
    request = NetworkRequest(n=groups[-1].stop, groups=groups, seed=seed, base_dir=scenario.base_dir)
    try:
        return build_network(generator, request)
    except ScenarioError as exc:
        if exc.location is None and exc.path:
            raise scenario.error(exc.path, exc.message) from None
        raise


def _check_parameters_used(scenario: Scenario, dynamics: list[Any]) -> None:
    """A per-agent parameter set in the scenario but read by no listed dynamics is an error."""
    used = set()
    for plugin in dynamics:
        used.update(getattr(plugin, "uses", ()))
    for i, group in enumerate(scenario.spec.population):
        for name in AGENT_PARAMETERS:
            # a resolved scenario spells out every default, so only a value away from it counts as set
            if getattr(group, name) != type(group).model_fields[name].default and name not in used:
                users = [n for n in registry.names("dynamics") if name in getattr(registry.get("dynamics", n),
                                                                                  "uses", ())]
                raise scenario.error(
                    f"population[{i}].{name}",
                    f"is set, but no listed dynamics uses it (add one of: {', '.join(users)})")
