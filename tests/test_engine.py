"""The engine driven from outside: streams per world, absent agents, baselines, actions, resets, protocols."""

from __future__ import annotations

import pytest
import torch

import sim
from sim.runs.checkpoint import load_checkpoint, save_checkpoint


def _scenario(**changes):
    data = {
        "name": "engine", "seed": 5, "steps": 10, "values": ["a", "b"],
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 6}},
        "population": [
            {"name": "people", "count": 120, "confidence": {"dist": "uniform", "low": 0.2, "high": 0.5}, "rate": 0.3},
            {"name": "pushers", "count": 6, "policy": {"zealot": {"values": [0.95, 0.05]}}, "confidence": 0.3},
        ],
        "dynamics": ["deffuant", {"noise": {"sigma": 0.01}}],
        "metrics": ["mean_values"],
    }
    data.update(changes)
    return sim.scenario_from_dict(data)


def test_world_b_of_a_batch_is_the_single_world_run_of_its_stream():
    batch = sim.build(_scenario(), worlds=4)
    alone = sim.build(_scenario(), streams=[2])
    batch.advance(8)
    alone.advance(8)
    assert torch.equal(batch.state.values[2], alone.state.values[0])
    assert not torch.equal(batch.state.values[1], batch.state.values[2])
    twins = sim.build(_scenario(), streams=[3, 3])
    twins.advance(8)
    assert torch.equal(twins.state.values[0], twins.state.values[1])


def test_absent_agents_are_frozen_and_the_rest_go_on():
    simulation = sim.build(_scenario(dynamics=["deffuant", "friedkin_johnsen", {"noise": {"sigma": 0.05}},
                                               "hegselmann_krause"]), worlds=2)
    absent = torch.zeros_like(simulation.state.active)
    absent[1, :40] = True
    simulation.state.active = ~absent
    start = simulation.state.values.clone()
    simulation.advance(5)
    values = simulation.state.values
    assert torch.equal(values[1, :40], start[1, :40])
    assert not torch.equal(values[1, 40:120], start[1, 40:120])
    assert not torch.equal(values[0, :40], start[0, :40])


def test_a_baseline_policy_replaces_a_groups_own_in_the_worlds_that_say_so():
    honest_pushers = _scenario(population=[
        {"name": "people", "count": 120, "confidence": {"dist": "uniform", "low": 0.2, "high": 0.5}, "rate": 0.3},
        {"name": "pushers", "count": 6, "confidence": 0.3}])
    mixed = sim.build(_scenario(), worlds=2)
    own = mixed.state.own_policy.clone()
    own[1, 120:] = False  # world 1: the pushers act by their baseline (honest, the default)
    mixed.state.own_policy = own
    mixed.advance(6)
    reference = sim.build(honest_pushers, streams=[1])
    reference.advance(6)
    assert torch.equal(mixed.state.values[1], reference.state.values[0])
    zealots = sim.build(_scenario(), streams=[0])
    zealots.advance(6)
    assert torch.equal(mixed.state.values[0], zealots.state.values[0])


def test_actions_written_in_replace_what_a_group_expresses():
    simulation = sim.build(_scenario(dynamics=["deffuant"]), worlds=2)
    free = sim.build(_scenario(dynamics=["deffuant"]), worlds=2)
    shown = torch.zeros((2, 6, 2))  # the pushers now show (0, 0) in every world
    for _ in range(5):
        simulation.step(actions={"pushers": {"express": shown}})
        free.step()
    assert torch.equal(simulation.state.expressed[:, 120:], shown)
    assert not torch.equal(simulation.state.values, free.state.values)
    with pytest.raises(ValueError, match=r"actions\['pushers'\]\['express'\] must be a tensor of shape \[2, 6, 2\]"):
        simulation.step(actions={"pushers": {"express": torch.zeros(6, 2)}})
    with pytest.raises(ValueError, match="actions for unknown group 'nobody'"):
        simulation.step(actions={"nobody": {"express": shown}})


def test_a_reset_world_restarts_as_the_fresh_run_of_its_new_stream():
    simulation = sim.build(_scenario(), worlds=3)
    untouched = sim.build(_scenario(), worlds=3)
    simulation.advance(4)
    untouched.advance(4)
    simulation.reset_worlds(torch.tensor([False, True, False]))
    assert simulation.rng.stream.tolist() == [0, 3, 2] and simulation.state.world_step.tolist() == [4, 0, 4]
    simulation.advance(5)
    untouched.advance(5)
    fresh = sim.build(_scenario(), streams=[3])
    fresh.advance(5)
    assert torch.equal(simulation.state.values[1], fresh.state.values[0])
    assert torch.equal(simulation.world.params.confidence[1], fresh.world.params.confidence[0])
    assert torch.equal(simulation.state.values[[0, 2]], untouched.state.values[[0, 2]])


def test_per_world_parameters_make_a_sweep_of_one_batch():
    sweep = sim.build(_scenario(), worlds=2)
    n = sweep.world.n
    sweep.set_params(confidence=torch.stack([torch.full((n,), 0.1), torch.full((n,), 0.45)]))
    sweep.advance(6)
    for world, bound in ((0, 0.1), (1, 0.45)):
        point = sim.build(_scenario(population=[
            {"name": "people", "count": 120, "confidence": bound, "rate": 0.3},
            {"name": "pushers", "count": 6, "policy": {"zealot": {"values": [0.95, 0.05]}}, "confidence": bound}]),
            streams=[world])
        point.world.initial.copy_(sweep.world.initial[world:world + 1])  # the sweep's own initial draws
        point.state.values = point.world.initial.clone()
        point.advance(6)
        assert torch.equal(sweep.state.values[world], point.state.values[0])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\], got 1.5"):
        sweep.set_params(confidence=torch.full((1, n), 1.5))


def _broadcast(**params):
    return _scenario(dynamics=["friedkin_johnsen"], protocols=[{"broadcast": {"speakers": "pushers", **params}}],
                     metrics=[{"protocol_outcome": {"protocol": "broadcast", "outcome": "reached"}}])


def test_broadcast_reaches_present_listeners_at_its_cadence():
    simulation = sim.build(_broadcast(share=0.5, every=2), worlds=2)
    active = simulation.state.active.clone()
    active[0, :30] = False
    simulation.state.active = active
    reached = []
    for _ in range(6):
        simulation.step()
        reached.append(simulation.state.protocols["broadcast"]["reached"].tolist())
    assert [r == [0, 0] for r in reached] == [True, False, True, False, True, False]
    heard = simulation.state.protocols["broadcast"]["heard"]
    assert int(heard[0, :30].sum()) == 0 and int(heard[0, 30:].sum()) > 0
    assert 0.35 < sum(sum(r) for r in reached) / (3 * (90 + 120)) < 0.65


def test_a_protocol_action_written_in_overrides_its_default():
    simulation = sim.build(_broadcast(share=0.5), worlds=2)
    simulation.step(actions={"pushers": {"share": torch.tensor([[0.0] * 6, [1.0] * 6])}})
    assert simulation.state.protocols["broadcast"]["reached"].tolist() == [0, 120]
    assert simulation.action_names("pushers") == ["express", "share"] and simulation.action_names("people") == \
        ["express"]
    with pytest.raises(ValueError, match=r"actions\['pushers'\] names 'volume', which no protocol asks of group "
                                         r"'pushers' \(its actions: express, share\)"):
        simulation.step(actions={"pushers": {"volume": torch.zeros(2, 6)}})


def test_a_protocol_naming_a_missing_group_is_a_scenario_error():
    with pytest.raises(sim.ScenarioError, match=r"protocols\[0\]: broadcast: speakers must name a group "
                                                r"\(people, pushers\), got 'ais'"):
        sim.build(_scenario(protocols=[{"broadcast": {"speakers": "ais"}}]))


def test_an_rl_group_acts_by_what_is_written_in_and_shows_its_values_without_it():
    with pytest.raises(sim.ScenarioError, match=r"population\[0\].kind: an rl group needs an 'rl:' entry"):
        _scenario(population=[{"name": "agents", "kind": "rl", "count": 4}])
    rl = {"reward": {"metric": "mean_values", "scope": "people"}}
    scenario = _scenario(population=[{"name": "people", "count": 40}, {"name": "learners", "kind": "rl", "count": 3,
                                                                        "rl": rl}], dynamics=["deffuant"])
    assert scenario.spec.population[1].policy.name == "external"
    simulation = sim.build(scenario, worlds=2)
    before = simulation.state.values[:, 40:].clone()
    simulation.step()  # nothing written in: the external policy's default shows the agents' own values
    assert torch.equal(simulation.state.expressed[:, 40:], before)
    shown = torch.full((2, 3, 2), 0.25)
    simulation.step(actions={"learners": {"express": shown}})
    assert torch.equal(simulation.state.expressed[:, 40:], shown)


def test_a_checkpoint_through_the_run_format_resumes_bit_for_bit(tmp_path):
    straight = sim.build(_broadcast(share=0.3), worlds=2)
    straight.advance(10)
    first = sim.build(_broadcast(share=0.3), worlds=2)
    first.advance(4)
    first.reset_worlds(torch.tensor([True, False]))
    first.advance(2)
    save_checkpoint(tmp_path, first.snapshot(), lambda path, data: path.write_bytes(data))
    second = sim.build(_broadcast(share=0.3), worlds=2)
    second.restore(load_checkpoint(tmp_path))
    second.advance(4)
    first.advance(4)
    assert torch.equal(second.state.values, first.state.values)
    assert torch.equal(second.state.protocols["broadcast"]["heard"], first.state.protocols["broadcast"]["heard"])
    assert torch.equal(second.state.values[1], straight.state.values[1])


def test_protocol_events_and_outcomes_reach_the_run_log(tmp_path):
    run = sim.open_run(sim.run(_broadcast(share=0.4), runs_dir=tmp_path))
    events = [e for e in run.events() if e["event"] == "broadcast"]
    assert len(events) == 10 and all(e["protocol"] == "broadcast" for e in events)
    reached = run.metrics().query("metric == 'broadcast.reached'")
    assert reached["step"].tolist() == list(range(11)) and reached["value"].iloc[1:].gt(0).all()
    assert [e["reached"] for e in events] == [[int(v)] for v in reached["value"].iloc[1:]]


def test_a_policy_parameter_varies_across_the_worlds_of_one_batch():
    def with_margin(margin):
        return _scenario(population=[
            {"name": "people", "count": 120, "confidence": {"dist": "uniform", "low": 0.2, "high": 0.5}, "rate": 0.3},
            {"name": "pushers", "count": 6, "confidence": 0.3,
             "policy": {"strategic_influencer": {"goal": [0.95, 0.05], "margin": margin}}}])

    swarm = sim.build(with_margin(0.9), worlds=3)
    swarm.vary_policy("pushers", [{"margin": 0.2}, {}, {"margin": 0.2}])
    swarm.advance(5)
    for world, margin in ((0, 0.2), (1, 0.9), (2, 0.2)):
        alone = sim.build(with_margin(margin), streams=[world])
        alone.advance(5)
        assert torch.equal(swarm.state.values[world], alone.state.values[0])
    assert len(swarm._variants[1][0]) == 2  # two distinct parameter sets, not three policies  # noqa: SLF001
    with pytest.raises(ValueError, match=r"strategic_influencer parameters of world 0: margin: "
                                         r"must be in \(0, 1\], got 2"):
        swarm.vary_policy("pushers", [{"margin": 2.0}] * 3)


def test_a_protocol_parameter_varies_across_the_worlds_of_one_batch():
    swarm = sim.build(_broadcast(share=0.3), worlds=3)
    swarm.vary_protocol("broadcast", [{"share": 0.05}, {}, {"share": 0.9}])
    assert swarm.protocols[0][1].params.share.tolist() == [0.05, 0.3, 0.9]  # held as one [B] tensor
    swarm.advance(5)
    for world, share in ((0, 0.05), (1, 0.3), (2, 0.9)):
        alone = sim.build(_broadcast(share=share), streams=[world])
        alone.advance(5)
        assert torch.equal(swarm.state.values[world], alone.state.values[0])
        heard = swarm.state.protocols["broadcast"]["heard"], alone.state.protocols["broadcast"]["heard"]
        assert torch.equal(heard[0][world], heard[1][0])
    with pytest.raises(ValueError, match=r"protocol 'broadcast' parameters of world 1: share: "
                                         r"must be in \[0, 1\], got 1.5"):
        swarm.vary_protocol("broadcast", [{}, {"share": 1.5}, {}])
    with pytest.raises(ValueError, match=r"protocol 'broadcast': every cannot vary per world "
                                         r"\(per-world parameters: share\)"):
        swarm.vary_protocol("broadcast", [{"every": 2}] * 3)


class FollowTheCrowd:
    """Moves the AI group a share of the way toward the present humans' mean every step (a test rule)."""

    class Params(sim.contracts.PluginParams):
        share: float = 0.5
        ai: str = "pushers"
        humans: str = "people"

    def __init__(self, params):
        self.params = params

    def start(self, world, rng):
        return {"updates": torch.zeros(world.b, dtype=torch.int64)}

    def update(self, values, state, world, carry, rng):
        ai, people = world.group(self.params.ai).rows, world.group(self.params.humans).rows
        present = state.active[:, people, None].to(values.dtype)
        centre = (values[:, people] * present).sum(1, keepdim=True) / present.sum(1, keepdim=True)
        new = values.clone()
        new[:, ai] = values[:, ai] + self.params.share * (centre - values[:, ai])
        return sim.contracts.StepOutput(values=new, carry={"updates": carry["updates"] + 1}, events=[])


def test_alignment_rules_move_the_ai_toward_the_humans_it_serves():
    from sim import checks, registry

    checks.check_alignment(FollowTheCrowd, {"ai": "second", "humans": "first"})
    with registry.scratch():
        registry.register("alignment", "follow_the_crowd")(FollowTheCrowd)
        simulation = sim.build(_scenario(population=[
            {"name": "people", "count": 120, "confidence": 0.3, "rate": 0.3},
            {"name": "pushers", "kind": "ai", "count": 6, "init": {"dist": "constant", "value": 0.95}}],
            alignment=[{"follow_the_crowd": {"share": 0.5}}]), worlds=2)
        active = simulation.state.active.clone()
        active[1, 123] = False
        simulation.state.active = active
        simulation.advance(6)
    values, people = simulation.state.values, simulation.state.values[:, :120].mean(1)
    gap = (values[:, 120:] - people[:, None]).abs().amax(-1)
    gap[1, 3] = 0  # agent 123 of world 1 was absent
    assert gap.max() < 0.1  # the AI caught up with the crowd
    alone = sim.build(_scenario(population=[
        {"name": "people", "count": 120, "confidence": 0.3, "rate": 0.3},
        {"name": "pushers", "kind": "ai", "count": 6, "init": {"dist": "constant", "value": 0.95}}]), worlds=2)
    alone.advance(6)
    assert (alone.state.values[:, 120:] - alone.state.values[:, :120].mean(1)[:, None]).abs().mean() > 0.3
    assert torch.equal(values[1, 123], simulation.world.initial[1, 123])  # an absent AI agent is not moved
    assert simulation.state.alignment["follow_the_crowd"]["updates"].tolist() == [6, 6]


def test_check_alignment_refuses_a_rule_that_moves_the_absent():
    from sim import checks
    from sim.errors import PluginError

    class MovesEveryone(FollowTheCrowd):
        """Pulls every agent toward 0.5."""

        def update(self, values, state, world, carry, rng):
            return sim.contracts.StepOutput(values=values + 0.5 * (0.5 - values), carry=carry, events=[])

    with pytest.raises(PluginError, match=r"update\(\) moved an absent agent \(state.active False\)"):
        checks.check_alignment(MovesEveryone, {"ai": "second", "humans": "first"})


def test_a_reset_world_forgets_its_consensus_time():
    simulation = sim.build(_scenario(dynamics=["deffuant"], metrics=[{"consensus_time": {"tolerance": 1.0}}]),
                           worlds=2)
    simulation.advance(3)
    simulation.observe()  # everything is within 1.0: consensus "at" step 3 in both worlds
    simulation.reset_worlds(torch.tensor([True, False]))
    simulation.advance(2)
    (time,) = [r for r in simulation.observe() if r.metric == "consensus_time"]
    assert time.value[:, 0, 0].tolist() == [2.0, 3.0]  # world 0 counts its own steps again


def test_counterfactual_twins_share_streams_without_the_named_groups():
    simulation = sim.build(_scenario(counterfactual=["pushers"]), worlds=2)
    assert simulation.world.b == 4 and simulation.rng.stream.tolist() == [0, 1, 0, 1]
    assert simulation.world.twin.tolist() == [2, 3, 0, 1]
    assert simulation.world.counterfactual.tolist() == [False, False, True, True]
    assert not simulation.state.active[2:, 120:].any() and simulation.state.active[:2].all()
    simulation.advance(3)
    simulation.reset_worlds(torch.tensor([False, False, False, True]))  # world 3 restarts with world 1
    assert simulation.rng.stream.tolist() == [0, 2, 0, 2] and simulation.state.world_step.tolist() == [3, 0, 3, 0]
    with pytest.raises(sim.ScenarioError, match="counterfactual: unknown group 'ais'"):
        _scenario(counterfactual=["ais"])


class Overshoots:
    """Pushes every value a little past the top (a broken plugin)."""

    Params = sim.contracts.NoParams
    uses = ()

    def __init__(self, params):
        self.params = params

    def apply(self, values, expressed, state, world, rng):
        return values + 0.6


def test_a_plugin_that_leaves_the_unit_range_stops_the_run_naming_it():
    from sim import registry

    with registry.scratch():
        registry.register("dynamics", "overshoots")(Overshoots)
        simulation = sim.build(_scenario(dynamics=["deffuant", "overshoots"]))
        with pytest.raises(sim.core.engine.StepError, match=r"^step 1: dynamics 'overshoots' apply\(\) returned "
                                                            r"values outside \[0, 1\] \(from 0\.\d+ to 1\.\d+\); "
                                                            r"keep them in range, e.g. with .clamp\(0, 1\)$"):
            simulation.step()


def test_the_protocol_checker_refuses_a_per_world_field_read_as_a_plain_number():
    from plugins.protocols import Broadcast
    from sim.plugin.checks import check_protocol

    class FloatShare(Broadcast):
        """Declares share per world but reads it as one number for every world."""

        def step(self, values, state, world, carry, rng, ask):
            share = float(self.params.share)  # a [B] tensor of two worlds cannot be one float
            return super().step(values, state, world, carry, rng, ask) if share >= 0 else None

    class Misnamed(Broadcast):
        """Declares a per-world field it does not have."""

        per_world = ("volume",)

    check_protocol(Broadcast, {"speakers": "second"})
    with pytest.raises(sim.errors.PluginError, match=r"step\(\) with per_world tensors"):
        check_protocol(FloatShare, {"speakers": "second"})
    with pytest.raises(sim.errors.PluginError, match=r"per_world names 'volume', which is not a field of Params"):
        check_protocol(Misnamed, {"speakers": "second"})
