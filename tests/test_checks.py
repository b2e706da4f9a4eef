"""sim.checks: every registered plugin passes; each kind of broken plugin is refused with its exact message."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from pydantic import BaseModel, Field

from sim import registry
from sim.checks import (
    check_alignment, check_dynamics, check_metric, check_network, check_plugin, check_policy, check_protocol,
    tiny_world,
)
from sim.contracts import NoParams, PluginParams, ProtocolOutput, Reading
from sim.errors import PluginError

CHECKS = {"dynamics": check_dynamics, "metrics": check_metric, "networks": check_network, "policies": check_policy,
          "protocols": check_protocol, "alignment": check_alignment}
# Parameters for registered plugins whose Params have required fields (networks: as the project's issue lists).
PARAMS = {
    "networks": {"erdos_renyi": {"p": 0.3}, "watts_strogatz": {"k": 4, "p": 0.1}, "barabasi_albert": {"m": 2},
                 "powerlaw_cluster": {"m": 2, "p": 0.1}, "stochastic_block": {"p_in": 0.5, "p_out": 0.1}},
    "policies": {"strategic_influencer": {"goal": 0.9},
                 # an offline LLM persona in the checker's own value space ("check", d0..d2)
                 "llm": {"persona": {"name": "tiny", "values": {"check": {"d0": 0.2, "d1": 0.5, "d2": 0.8}},
                                     "goal": {"check": {"d0": 0.9, "d1": 0.9, "d2": 0.1}}, "strategy": "covert",
                                     "system_prompt": "You value {values_text}.",
                                     "message_prompt": "They value {audience_text}.",
                                     "questionnaire": {"at_start": False}}}},
    "protocols": {"broadcast": {"speakers": "second", "share": 0.8},
                  "trusted_broadcast": {"speakers": "second", "share": 0.8, "trust": 1.5, "trust_spread": 0.5},
                  # a one-turn trial in the checker's value space, its domain inline (decisions: tests/test_decisions.py)
                  "advice": {"clients": "first", "arms": [{"group": "second", "advisor": "strategic"}], "turns": 1,
                             "domains": [{"name": "tiny", "options": [
                                 {"name": "good", "profile": {"check": {"d0": 0.8}}},
                                 {"name": "bad", "harmful": True, "profile": {"check": {"d0": 0.1, "d2": 0.9}}}]}]},
                  "delegation": {"principals": "first", "agents": "second", "asymmetry": 0.5}},
    "metrics": {"protocol_outcome": {"protocol": "checked", "outcome": "count"},
                "alignment_gap": {"ai": ["second"], "humans": ["first"]},
                "lock_in": {"humans": ["first"]},
                "progress_scores": {"ai": ["second"], "humans": ["first"],
                                    "points": [[0, 0.2, 0.5, 0.8], [4, 0.6, 0.4, 0.2]], "horizon": 2}},
    "dynamics": {"drift": {"trend": [0.01, -0.02, 0.0]}},
    "alignment": {"static": {"ai": "second"}, **{rule: {"ai": "second", "humans": ["first"]}
                                                for rule in ("follow", "lifelong", "extrapolative")}},
}
ORIGIN = "file /plugins/fake.py"
WORLD = "the tiny world of sim.checks (B=2, N=12 in 2 groups, K=3, a ring)"


# ---------------------------------------------------------------- every registered plugin passes


def _registered():
    return [(kind, name) for kind in CHECKS for name in sorted(registry.entry_points(kind))]


@pytest.mark.parametrize("kind, name", _registered(), ids=lambda v: v)
def test_registered_plugins_keep_their_contract(kind, name, tmp_path):
    plugin = registry.get(kind, name)
    entry = registry.entry_points(kind)[name]
    check_plugin(kind, plugin, name=name, origin=f"distribution {entry.dist.name} ({entry.value})")
    params = PARAMS.get(kind, {}).get(name)
    if (kind, name) == ("networks", "file"):
        ring = tmp_path / "ring.edgelist"
        ring.write_text("".join(f"{i} {(i + 1) % 12}\n" for i in range(12)))
        params = {"path": str(ring)}
    if (kind, name) in (("metrics", "advice_trial"), ("metrics", "delegation_trial")):  # they read a trial's carry
        from tests.test_decisions import on_a_trial

        protocol = name.removesuffix("_trial")
        plugin = on_a_trial(plugin, protocol, PARAMS["protocols"][protocol])
    if (kind, name) == ("policies", "trained"):  # a saved policy for the checker's tiny world (the rl extra)
        params = {"path": str(pytest.importorskip("sim.marl.testing").checker_policy(tmp_path))}
    CHECKS[kind](plugin, params)


def test_the_checks_leave_global_random_state_alone():
    before = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    check_dynamics(registry.get("dynamics", "noise"))
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])


# ---------------------------------------------------------------- fakes, each broken one way


class Fine:
    """A dynamics that keeps the contract: pulls every value a little toward 0.5."""

    Params = NoParams
    uses = ()

    def __init__(self, params):
        self.params = params

    def apply(self, values, expressed, state, world, rng):
        return values + 0.1 * (0.5 - values)


class NoParamsAttr:
    """No Params."""

    uses = ()

    def __init__(self, params):
        self.params = params

    def apply(self, values, expressed, state, world, rng):
        return values.clone()


class DictParams(Fine):
    """Params that is not a pydantic model."""

    Params = dict


class LooseParams(Fine):
    """Params that accepts any key."""

    class Params(BaseModel):
        sigma: float = 0.1


class BadDefault(Fine):
    """A default that fails its own constraint."""

    class Params(PluginParams):
        sigma: float = Field(2.0, le=1, validate_default=True)


class WrongSignature(Fine):
    """apply() with the wrong parameters."""

    def apply(self, values, state):
        return values.clone()


class NoDocstring(Fine):
    pass


class InitWithoutParams(Fine):
    """__init__ that takes no params."""

    def __init__(self):
        pass


class NoUsesAtAll:
    """A dynamics without uses."""

    Params = NoParams

    def __init__(self, params):
        self.params = params

    def apply(self, values, expressed, state, world, rng):
        return values.clone()


class MisspeltUses(Fine):
    """uses names an unknown parameter."""

    uses = ("confidance",)


class UsesList(Fine):
    """uses as a list."""

    uses = ["rate"]


def not_a_class(params):
    """A function where a class is expected."""


class WrongShape(Fine):
    """Returns one number per agent."""

    def apply(self, values, expressed, state, world, rng):
        return values.mean(2)


class InPlace(Fine):
    """Changes its input."""

    def apply(self, values, expressed, state, world, rng):
        return values.mul_(0.5)


class Float64(Fine):
    """Returns float64."""

    def apply(self, values, expressed, state, world, rng):
        return values.double()


class NotFinite(Fine):
    """Returns NaN."""

    def apply(self, values, expressed, state, world, rng):
        return values * torch.nan


class GlobalRandom(Fine):
    """Draws from torch's global generator."""

    def apply(self, values, expressed, state, world, rng):
        return torch.rand_like(values)


class Raises(Fine):
    """Fails when run."""

    def apply(self, values, expressed, state, world, rng):
        raise RuntimeError("boom")


class HearsTheAbsent(Fine):
    """Pulls everyone toward the population's mean, absent agents included."""

    def apply(self, values, expressed, state, world, rng):
        return (values + values.mean(dim=1, keepdim=True)) / 2


class ShowsTheCrowd:
    """Shows the mean of everyone, absent agents included."""

    Params = NoParams

    def __init__(self, params):
        self.params = params

    def express(self, state, world, group, rng):
        own = state.values[:, group.rows]
        return state.values.mean(dim=1, keepdim=True).expand_as(own).clone()


class FineProtocol:
    """Does nothing, and counts the steps."""

    Params = NoParams
    uses = ()

    def __init__(self, params):
        self.params = params

    def start(self, world, rng):
        return {"steps": torch.zeros(world.b, dtype=torch.int64)}

    def action_spaces(self, world):
        return {}

    def step(self, values, state, world, carry, rng, ask):
        return ProtocolOutput(values=None, carry={"steps": carry["steps"] + 1}, events=[])


class MovesTheAbsent(FineProtocol):
    """Pulls every agent a little toward the middle, absent or not."""

    def step(self, values, state, world, carry, rng, ask):
        return ProtocolOutput(values=values + 0.1 * (0.5 - values), carry=carry, events=[])


class UnbatchedCarry(FineProtocol):
    """Keeps a number, not a tensor per world."""

    def start(self, world, rng):
        return {"steps": 0}


class AsksUndeclared(FineProtocol):
    """Asks for an action it never declared."""

    def step(self, values, state, world, carry, rng, ask):
        ask("first", "volume")
        return super().step(values, state, world, carry, rng, ask)


class PolicyBase:
    """Shows its own values."""

    Params = NoParams

    def __init__(self, params):
        self.params = params

    def express(self, state, world, group, rng):
        return state.values[:, group.rows].clone()


class OutOfRange(PolicyBase):
    """Shows 1.5 everywhere."""

    def express(self, state, world, group, rng):
        return torch.full((world.b, group.size, world.k), 1.5)


class FlagNotBool(PolicyBase):
    """expresses_own_values is not a bool."""

    expresses_own_values = 1


class LyingHonest(PolicyBase):
    """Says it shows its own values but does not."""

    expresses_own_values = True

    def express(self, state, world, group, rng):
        return 1 - state.values[:, group.rows]


class BadPrepare(PolicyBase):
    """prepare() without the group."""

    def prepare(self, world):
        pass


class MetricBase:
    """The mean of every active agent's values."""

    Params = NoParams

    def __init__(self, params):
        self.params = params

    def observe(self, state, world, carry, rng):
        weight = state.active.double()[..., None]
        mean = (state.values.double() * weight).sum((1, 2)) / (weight.sum((1, 2)) * world.k)
        return [Reading("mean", mean.view(-1, 1, 1), ("all",))], carry


class CountsEveryone(MetricBase):
    """The mean of everything, inactive agents included."""

    def observe(self, state, world, carry, rng):
        mean = state.values.double().mean((1, 2)).view(-1, 1, 1)
        return [Reading("mean", mean, ("all",))], carry


class NotReading(MetricBase):
    """Returns a dict for a reading."""

    def observe(self, state, world, carry, rng):
        return [{"metric": "mean"}], carry


class ReadingShape(MetricBase):
    """A reading shaped [B, 3]."""

    def observe(self, state, world, carry, rng):
        return [Reading("mean", torch.zeros(2, 3, dtype=torch.float64), ("all",))], carry


class NoCarry(MetricBase):
    """Returns only the readings."""

    def observe(self, state, world, carry, rng):
        return super().observe(state, world, carry, rng)[0]


class NoObserve:
    """No observe()."""

    Params = NoParams

    def __init__(self, params):
        self.params = params


class NetworkBase:
    """A ring."""

    Params = NoParams

    def __init__(self, params):
        self.params = params

    def build(self, request):
        return nx.cycle_graph(request.n)


class IdsOutOfRange(NetworkBase):
    """Counts nodes from 1."""

    def build(self, request):
        return np.array([[0, 12]])


class NodesFromOne(NetworkBase):
    """A graph on nodes 1..N."""

    def build(self, request):
        return nx.cycle_graph(range(1, request.n + 1))


class EdgeList(NetworkBase):
    """A Python list of edges."""

    def build(self, request):
        return [[0, 1]]


class Unseeded(NetworkBase):
    """Ignores request.seed."""

    def build(self, request):
        return nx.gnp_random_graph(request.n, 0.5)


# (kind, fake, what check_plugin says is wrong): the static checks, shared by both entry points.
STATIC = [
    ("dynamics", NoParamsAttr, "it has no Params; add `Params = NoParams` (from sim.contracts) "
                               "or a nested `class Params(PluginParams)`"),
    ("dynamics", DictParams, "Params is the class dict, not a pydantic model; "
                             "make it a subclass of sim.contracts.PluginParams"),
    ("dynamics", LooseParams, "Params accepts unknown keys, so a misspelt parameter would pass unnoticed; "
                              "subclass sim.contracts.PluginParams (or set extra='forbid' in its model_config)"),
    ("dynamics", BadDefault, "the default of Params.sigma does not validate "
                             "(Input should be less than or equal to 1); fix the default"),
    ("dynamics", WrongSignature, "apply() takes (values, state) but the contract is "
                                 "apply(values, expressed, state, world, rng)"),
    ("dynamics", NoDocstring, "add a class docstring: it is what `valuesim plugins show` prints"),
    ("dynamics", InitWithoutParams, "__init__ takes () but the contract is __init__(self, params): "
                                    "keep the validated Params as self.params"),
    ("dynamics", NoUsesAtAll, "it has no `uses`; add a class attribute naming the per-agent parameters apply() "
                              "reads, e.g. uses = ('confidence', 'rate'), or uses = () for none"),
    ("dynamics", MisspeltUses, "uses names 'confidance' (did you mean 'confidence'?), which is not a per-agent "
                               "parameter; choose among confidence, rate, anchoring"),
    ("dynamics", UsesList, "uses must be a tuple of names, got ['rate']; e.g. uses = ('confidence', 'rate')"),
    ("dynamics", not_a_class, "the entry point gives a function, not a class; "
                              "point it at the plugin class (module:ClassName)"),
    ("policies", FlagNotBool, "expresses_own_values must be True or False, got 1"),
    ("policies", BadPrepare, "prepare() takes (world) but the contract is prepare(world, group)"),
    ("metrics", NoObserve, "it has no observe() method; the contract is observe(state, world, carry, rng)"),
]

# (kind, fake, what the per-kind check says is wrong): found only by running the plugin.
RUNNING = [
    ("dynamics", HearsTheAbsent, "apply() lets an absent agent (state.active False: agent 3 of world 1) influence "
                                 "the others; leave inactive agents out of partners, neighbourhoods and audiences "
                                 "(their values are not to be read)"),
    ("policies", ShowsTheCrowd, "express() lets an absent agent (state.active False: agent 3 of world 1) influence "
                                "the others; leave inactive agents out of partners, neighbourhoods and audiences "
                                "(their values are not to be read)"),
    ("protocols", MovesTheAbsent, "step() moved an absent agent (state.active False); leave inactive agents' "
                                  "values as they are"),
    ("protocols", UnbatchedCarry, "start() must return a dict of tensors with a leading world axis [B, ...] (B=2)"),
    ("protocols", AsksUndeclared, "step() asked for action 'volume' of group 'first', which action_spaces() does "
                                  "not declare"),
    ("dynamics", WrongShape, "apply() returned shape [2, 12] but the contract is [B, N, K] = [2, 12, 3]"),
    ("dynamics", InPlace, "apply() modified its input `values` in place; work on a copy (e.g. .clone()) and return it"),
    ("dynamics", Float64, "apply() returned torch.float64; return the dtype of the values (torch.float32)"),
    ("dynamics", NotFinite, "apply() returned NaN or infinite values"),
    ("dynamics", GlobalRandom, "apply() gave different results from the same seed; draw every random number from "
                               "the random streams (rng) or seed it is given, never from torch's, numpy's or Python's "
                               "global state"),
    ("dynamics", Raises, f"apply() raised RuntimeError: boom on {WORLD}"),
    ("policies", OutOfRange, "express() returned values outside [0, 1] (from 1.5 to 1.5); "
                             "keep them in range, e.g. with .clamp(0, 1)"),
    ("policies", LyingHonest, "expresses_own_values is True but express() does not return the group's current "
                              "values state.values[:, group.rows]; set it to False"),
    ("metrics", NotReading, "observe() returned a dict among its readings; "
                            "return sim.contracts.Reading(metric, value, scopes, dimensions)"),
    ("metrics", ReadingShape, "reading 'mean': value has shape [2, 3] but its scopes and dimensions call for "
                              "[B, len(scopes), len(dimensions)] = [2, 1, 1]"),
    ("metrics", NoCarry, "observe() returned a list; return (readings, carry): a list of sim.contracts.Reading "
                         "and the metric's memory (None if it keeps none)"),
    ("metrics", CountsEveryone, "reading 'mean' of world 0 changed when only the values of agent 2, inactive in "
                                "world 0 (state.active[0, 2] is False), changed; an inactive agent is not in the "
                                "world: leave it out of every scope (weight by state.active and count only active "
                                "agents)"),
    ("networks", IdsOutOfRange, "build() returned an unusable edge array for N=12: "
                                "edge endpoints must be in [0, 12), got values from 0 to 12"),
    ("networks", NodesFromOne, "build() returned an unusable graph for N=12: the graph's nodes must be the "
                               "integers 0..11; it has 12 nodes (for example 1, 2, 3, 4, 5). "
                               "Relabel with networkx.convert_node_labels_to_integers"),
    ("networks", EdgeList, "build() returned a list; return a networkx graph on nodes 0..N-1 "
                           "or an int64 numpy array [E, 2]"),
    ("networks", Unseeded, "build() gave different results from the same seed; draw every random number from "
                           "the random streams (rng) or seed it is given, never from torch's, numpy's or Python's "
                           "global state"),
]


def _ids(case):
    return getattr(case, "__name__", None) if callable(case) else None


@pytest.mark.parametrize("kind, fake, what", STATIC, ids=_ids)
def test_check_plugin_refuses_a_broken_plugin_by_name_and_origin(kind, fake, what):
    with pytest.raises(PluginError) as caught:
        check_plugin(kind, fake, name="fake", origin=ORIGIN)
    assert str(caught.value) == f"{kind} plugin 'fake' from {ORIGIN}: {what}"


@pytest.mark.parametrize("kind, fake, what", STATIC + RUNNING, ids=_ids)
def test_the_per_kind_check_refuses_a_broken_plugin(kind, fake, what):
    with pytest.raises(PluginError) as caught:
        CHECKS[kind](fake)
    assert str(caught.value) == f"{kind} plugin '{fake.__module__}:{fake.__qualname__}': {what}"


@pytest.mark.parametrize("kind, fake, what", RUNNING, ids=_ids)
def test_check_plugin_runs_nothing(kind, fake, what):
    check_plugin(kind, fake, name="fake", origin=ORIGIN)


def test_the_fakes_base_classes_pass():
    check_dynamics(Fine)
    check_policy(PolicyBase)
    check_metric(MetricBase)
    check_network(NetworkBase)


def test_only_kinds_with_a_written_contract_exist():
    with pytest.raises(PluginError, match=r"^unknown plugin kind 'trainers'"):
        check_plugin("trainers", NoDocstring, name="fake", origin=ORIGIN)
    with pytest.raises(PluginError, match=r"^unknown plugin kind 'policy'; did you mean 'policies'\?"):
        check_plugin("policy", Fine, name="fake", origin=ORIGIN)


def test_params_that_do_not_validate_are_named():
    with pytest.raises(PluginError) as caught:
        check_network(registry.get("networks", "watts_strogatz"), {"k": 4})
    assert str(caught.value) == ("networks plugin 'plugins.networks:WattsStrogatz': params {'k': 4} do not validate "
                                 "(p: Field required); pass valid ones: check_network(cls, params={...})")


def test_tiny_world_is_what_the_docstring_says():
    world, state = tiny_world()
    assert state.values.shape == world.initial.shape == (2, 12, 3) and state.values.dtype == torch.float32
    assert [g.size for g in world.groups] == [6, 6] and world.network.num_edges == 12
    assert not torch.equal(state.values, world.initial)
