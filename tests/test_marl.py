"""sim.marl: rl groups, the PettingZoo env (API and seed tests), the batched env, SB3 training, trained policies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sim
from sim.config.scenario import scenario_from_yaml
from sim.errors import ValuesimError
from tests.conftest import run_driver

pytest.importorskip("pettingzoo", reason="the rl extra: pip install 'valuesim[rl]'")
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test, seed_test  # noqa: E402

from sim.marl import VectorEnv, aec_env, parallel_env  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def _tiny(**rl_changes):
    rl = {"observe": ["own", "neighbours", "step", {"group": "people"},
                      {"protocol": "broadcast", "outcome": "accepted", "scale": 0.05}],
          "reward": {"metric": "mean_values", "scope": "people", "target": [0.9, 0.1], "sign": -1, "change": True},
          "episode": 8, **rl_changes}
    return sim.scenario_from_dict({
        "name": "tiny_rl", "seed": 3, "steps": 8, "values": ["a", "b"],
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 4}},
        "population": [
            {"name": "people", "count": 24, "confidence": {"dist": "uniform", "low": 0.2, "high": 0.4}, "rate": 0.3},
            {"name": "pushers", "kind": "rl", "count": 2, "zealots": 1.0, "rl": rl}],
        "dynamics": ["deffuant"],
        "protocols": [{"broadcast": {"speakers": "pushers", "audience": "people", "share": 0.5}}],
        "metrics": ["mean_values"]})


def _rl_scenarios():
    return [p for p in sorted(SCENARIOS.glob("*.yaml")) if "kind: rl" in p.read_text()]


# ---------------------------------------------------------------- the rl group in a scenario


def test_an_rl_group_declares_what_it_trains_on_and_acts_from_outside():
    scenario = _tiny()
    group = scenario.spec.population[1]
    assert group.policy.name == "external" and group.rl.reward.metric.name == "mean_values"
    env = VectorEnv(scenario, worlds=2)
    assert env.observation_space.shape == (2 + 2 + 1 + 2 + 1,) and env.action_space.shape == (2,)
    assert env.num_envs == 4 and env.agent_names() == ["pushers_0", "pushers_1"]
    env.reset()
    shown = torch.tensor([0.9, 0.1]).expand(4, 2)
    env.step(shown)
    assert torch.equal(env.simulation.state.expressed[:, 24:], shown.reshape(2, 2, 2))
    plain = sim.build(scenario)  # no action written in: the external policy shows its agents' own values
    plain.step()
    assert torch.equal(plain.state.expressed[:, 24:], plain.state.values[:, 24:])


def test_a_protocol_action_can_be_the_rl_action():
    env = VectorEnv(_tiny(action="share"), worlds=2)
    assert env.action_space.shape == () and float(env.action_space.high) == 1.0
    env.reset()
    env.step(torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert env.simulation.state.protocols["broadcast"]["reached"].tolist() == [0, 24]


@pytest.mark.parametrize("changes, message", [
    ({"action": "shout"}, r"population\[1\].rl.action: must be one of express, share .*got 'shout'"),
    ({"observe": [{"group": "nobody"}]}, r"population\[1\].rl.observe\[0\]: no group 'nobody' \(groups: people, "
                                         r"pushers\)"),
    ({"reward": {"metric": "mean_values", "scope": "crowd"}}, r"rl.reward.scope: must be one of .*got 'crowd'"),
    ({"reward": {"metric": "mean_valuez"}}, r"population\[1\].rl.reward.metric: .*mean_valuez"),
])
def test_a_wrong_rl_entry_names_its_place(changes, message):
    with pytest.raises(sim.ScenarioError, match=message):
        env = VectorEnv(_tiny(**changes))
        env.reset()
        env.step(torch.zeros((env.num_envs, *env.action_space.shape)))


def test_rl_and_kind_go_together():
    data = {"name": "x", "population": [{"name": "a", "kind": "rl", "count": 2}]}
    with pytest.raises(sim.ScenarioError, match=r"population\[0\].kind: an rl group needs an 'rl:' entry"):
        sim.scenario_from_dict(data)
    data["population"][0].update(kind="human", rl={"reward": {"metric": "mean_values"}})
    with pytest.raises(sim.ScenarioError, match=r"population\[0\].rl: is only for groups of kind rl"):
        sim.scenario_from_dict(data)


def test_a_missing_rl_library_names_the_extra(monkeypatch):
    from sim.marl._deps import require

    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    with pytest.raises(ValuesimError, match=r"stable_baselines3 is not installed .*pip install 'valuesim\[rl\]'"):
        require("stable_baselines3")


# ---------------------------------------------------------------- PettingZoo


@pytest.mark.parametrize("make", [_tiny, *[lambda p=p: sim.load_scenario(p) for p in _rl_scenarios()]],
                         ids=["tiny", *[p.stem for p in _rl_scenarios()]])
def test_pettingzoo_api_and_seed_tests(make):
    scenario = make()
    parallel_api_test(parallel_env(scenario), num_cycles=40)
    api_test(aec_env(scenario), num_cycles=40)
    parallel_seed_test(lambda: parallel_env(scenario), num_cycles=40)
    seed_test(lambda: aec_env(scenario), num_cycles=40)


def test_a_seed_changes_the_episode_and_a_reset_starts_a_fresh_one():
    env = parallel_env(_tiny())
    first, _ = env.reset(seed=1)
    again, _ = env.reset(seed=1)
    other, _ = env.reset(seed=2)
    assert np.array_equal(first["pushers_0"], again["pushers_0"])
    assert not np.array_equal(first["pushers_0"], other["pushers_0"])
    for _ in range(8):
        _, _, _, truncated, _ = env.step({a: env.action_space(a).sample() for a in env.agents})
    assert all(truncated.values()) and env.agents == []
    fresh, _ = env.reset()
    assert env.simulation.rng.stream.tolist() == [1] and not np.array_equal(fresh["pushers_0"], other["pushers_0"])


# ---------------------------------------------------------------- the batched environment


def test_the_batched_env_equals_one_pettingzoo_env_per_stream():
    scenario = _tiny()
    batch = VectorEnv(scenario, worlds=3)
    singles = [parallel_env(scenario, stream=b) for b in range(3)]
    obs = batch.reset()
    single_obs = [env.reset()[0] for env in singles]
    generator = torch.Generator().manual_seed(0)
    for step in range(8):
        for b, env in enumerate(singles):
            assert np.array_equal(obs[2 * b].numpy(), single_obs[b]["pushers_0"])
            assert np.array_equal(obs[2 * b + 1].numpy(), single_obs[b]["pushers_1"])
        actions = torch.rand((6, 2), generator=generator)
        out = batch.step(actions)
        for b, env in enumerate(singles):
            single_obs[b], rewards, _, truncated, _ = env.step(
                {"pushers_0": actions[2 * b].numpy(), "pushers_1": actions[2 * b + 1].numpy()})
            assert out.reward[2 * b].item() == rewards["pushers_0"] and out.reward[2 * b + 1].item() == rewards[
                "pushers_1"]
            assert bool(out.truncated[2 * b]) == truncated["pushers_0"] == (step == 7)
        obs = out.final_observation if out.final_observation is not None else out.observation
    for b in range(3):
        assert np.array_equal(obs[2 * b].numpy(), single_obs[b]["pushers_0"])


def test_ended_worlds_restart_on_fresh_streams_in_the_same_call():
    scenario = _tiny()
    env = VectorEnv(scenario, worlds=2)
    env.reset()
    for _ in range(7):
        out = env.step(torch.full((4, 2), 0.5))
        assert out.final_observation is None and not bool(out.truncated.any())
    out = env.step(torch.full((4, 2), 0.5))
    assert bool(out.truncated.all()) and out.final_observation is not None
    assert env.simulation.state.world_step.tolist() == [0, 0] and env.simulation.rng.stream.tolist() == [2, 3]
    fresh = VectorEnv(scenario, streams=[2, 3])
    assert torch.equal(out.observation, fresh.reset())
    assert not torch.equal(out.final_observation, out.observation)
    # the restarted worlds' change rewards are measured from their own fresh start
    assert torch.equal(env.step(torch.full((4, 2), 0.5)).reward, fresh.step(torch.full((4, 2), 0.5)).reward)


# ---------------------------------------------------------------- stable-baselines3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("stable_baselines3")
    from sim.marl.train import train

    out = tmp_path_factory.mktemp("train") / "run"
    train(SCENARIOS / "train_influencer.yaml", timesteps=4096, worlds=16, device="cpu", seed=1, out=out,
          algo_params={"n_steps": 32, "batch_size": 128, "learning_rate": 1e-3})
    return out


def test_sb3_ppo_beats_the_random_policy(trained):
    record = json.loads((trained / "train.json").read_text())
    assert record["status"] == "complete" and record["timesteps_done"] >= 4096
    ev = record["evaluation"]
    # the return is how much closer to the target the people got in an episode (in [0, 1] units of distance)
    assert ev["return"] > ev["random_return"] + 0.15, ev
    evaluations = [json.loads(line) for line in (trained / "evaluations.jsonl").read_text().splitlines()]
    assert len(evaluations) >= 5 and evaluations[-1]["return"] > evaluations[0]["return"]
    assert sorted((trained / "checkpoints").glob("policy_*_steps.zip"))
    assert (trained / "policy.zip").is_file() and json.loads((trained / "policy.json").read_text())["action"] == \
        "express"


def _replayed_in_a_scenario(named: Path, trained_dir: Path):
    """``train_influencer`` with the influencer acting by the policy named ``named``: five steps in which it
    expresses exactly what the loaded policy (``trained_dir``) acts. Returns the scenario, the policy and the
    group."""
    from sim.marl.policy import load_policy

    text = (SCENARIOS / "train_influencer.yaml").read_text().replace(
        "    rl:\n", f"    policy: {{trained: {{path: {named}}}}}\n    rl:\n")
    scenario = scenario_from_yaml(text)
    simulation = sim.build(scenario, worlds=3)
    policy, group = load_policy(trained_dir), simulation.world.group("influencer")
    for _ in range(5):
        expected = policy.act(simulation.state, simulation.world, group)
        simulation.step()
        assert torch.equal(simulation.state.expressed[:, group.rows], expected.to(simulation.state.values.dtype))
    return scenario, policy, group


def test_a_trained_policy_round_trips_through_a_scenario(trained, tmp_path):
    from sim.marl.policy import load_policy

    scenario, policy, group = _replayed_in_a_scenario(trained / "policy.zip", trained)
    # the same actions the training environment's actor takes on the same observations
    env = VectorEnv(scenario, worlds=3)
    obs = env.reset()
    action, _ = policy.model.predict(obs.numpy(), deterministic=True)
    from sim.marl.spaces import from_symmetric
    assert torch.equal(from_symmetric(torch.as_tensor(action), env.action_space),
                       load_policy(trained).act(env.simulation.state, env.simulation.world, group).reshape(3, 2))
    run = sim.run(scenario, runs_dir=tmp_path)
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"


def test_the_trained_policy_keeps_the_policy_contract_and_refuses_another_world(trained, tmp_path):
    from sim import registry
    from sim.checks import check_policy
    from sim.marl.testing import checker_policy

    check_policy(registry.get("policies", "trained"), {"path": str(checker_policy(tmp_path))})
    text = (SCENARIOS / "train_influencer.yaml").read_text().replace("values: wvs2", "values: [x, y]").replace(
        "{traditional_secular: 0.9, survival_self_expression: 0.9}", "[0.9, 0.9]").replace(
        "    rl:\n", f"    policy: {{trained: {{path: {trained}}}}}\n    rl:\n")
    with pytest.raises(sim.ScenarioError, match=r"population\[1\].policy: trained: the policy was trained on value "
                                                r"dimensions \['traditional_secular'"):
        sim.build(scenario_from_yaml(text))


def test_an_interrupted_training_run_resumes_from_its_latest_checkpoint(tmp_path):
    pytest.importorskip("stable_baselines3")
    from sim.marl.train import resume, train

    out = tmp_path / "run"
    train(SCENARIOS / "train_influencer.yaml", timesteps=512, worlds=4, device="cpu", seed=2, out=out,
          algo_params={"n_steps": 32}, checkpoint_every=128)
    record = json.loads((out / "train.json").read_text())
    record["status"], record["settings"]["timesteps"] = "interrupted", 1024  # as if stopped half-way
    (out / "train.json").write_text(json.dumps(record))
    resume(out)
    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "complete" and record["timesteps_done"] == 1024 and "resumed" in record
    assert (out / "checkpoints" / "policy_1024_steps.zip").is_file()
    with pytest.raises(ValuesimError, match="is complete: nothing to resume"):
        resume(out)


# ---------------------------------------------------------------- TorchRL


def _torchrl():
    pytest.importorskip("torchrl", reason="the rl extra: pip install 'valuesim[rl]'")
    from sim.marl.torchrl_env import TorchRLEnv, torchrl_env

    return TorchRLEnv, torchrl_env


@pytest.mark.parametrize("make", [_tiny, lambda: _tiny(action="share"),
                                  *[lambda p=p: sim.load_scenario(p) for p in _rl_scenarios()]],
                         ids=["tiny", "tiny_share", *[p.stem for p in _rl_scenarios()]])
def test_the_torchrl_env_passes_check_env_specs(make):
    _, torchrl_env = _torchrl()
    from torchrl.envs.utils import check_env_specs

    env = torchrl_env(make(), worlds=3)
    check_env_specs(env, seed=5)
    assert env.batch_size == torch.Size([3]) and env.device == torch.device("cpu")
    a = env.vector.agents_per_world
    assert env.full_observation_spec["agents", "observation"].shape == (3, a, env.vector.observation_space.shape[0])
    assert env.full_action_spec["agents", "action"].shape == (3, a, env.action_dim)
    assert env.full_done_spec["done"].shape == (3, 1)


def test_the_torchrl_env_equals_the_vector_env_on_the_same_streams():
    _, torchrl_env = _torchrl()
    scenario = _tiny()
    env, vector = torchrl_env(scenario, streams=[4, 9, 2]), VectorEnv(scenario, streams=[4, 9, 2])
    td = env.reset()
    obs = vector.reset()
    generator, ended = torch.Generator().manual_seed(0), 0
    for step in range(20):  # episodes of 8: both restart the ended worlds on the same fresh streams, twice
        assert torch.equal(td["agents", "observation"].reshape(6, -1), obs)
        actions = torch.rand((6, 2), generator=generator)
        td["agents", "action"] = actions.reshape(3, 2, 2)
        out, td = env.step_and_maybe_reset(td)
        expected = vector.step(actions)
        assert torch.equal(out["next", "agents", "reward"].reshape(6), expected.reward)
        assert torch.equal(out["next", "truncated"].reshape(3), expected.truncated[::2])
        assert torch.equal(out["next", "done"], out["next", "truncated"]) and not bool(out["next", "terminated"].any())
        final = expected.final_observation if expected.final_observation is not None else expected.observation
        assert torch.equal(out["next", "agents", "observation"].reshape(6, -1), final)  # before the restart
        obs, ended = expected.observation, ended + int(expected.truncated.any())
    assert ended == 2 and env.vector.simulation.rng.stream.tolist() == vector.simulation.rng.stream.tolist()
    assert env.vector.simulation.rng.stream.tolist() != [4, 9, 2]
    # a seed rebuilds the worlds on their first streams
    env.set_seed(11)
    assert torch.equal(env.reset()["agents", "observation"].reshape(6, -1),
                       VectorEnv(scenario, streams=[4, 9, 2], seed=11).reset())


@pytest.fixture(scope="module")
def trained_torchrl(tmp_path_factory):
    _torchrl()
    from sim.marl.train import train

    out = tmp_path_factory.mktemp("train_torchrl") / "run"
    train(SCENARIOS / "train_influencer.yaml", backend="torchrl", timesteps=4096, worlds=16, device="cpu", seed=1,
          out=out, algo_params={"n_steps": 32, "batch_size": 128, "learning_rate": 1e-3})
    return out


def test_torchrl_ppo_beats_the_random_policy(trained_torchrl):
    record = json.loads((trained_torchrl / "train.json").read_text())
    assert record["status"] == "complete" and record["timesteps_done"] >= 4096
    assert record["settings"]["backend"] == "torchrl" and "torchrl" in record["versions"]
    ev = record["evaluation"]
    assert ev["return"] > ev["random_return"] + 0.15, ev
    evaluations = [json.loads(line) for line in (trained_torchrl / "evaluations.jsonl").read_text().splitlines()]
    assert len(evaluations) >= 5 and evaluations[-1]["return"] > evaluations[0]["return"]
    assert sorted((trained_torchrl / "checkpoints").glob("policy_*_steps.pt"))
    assert list((trained_torchrl / "tensorboard").rglob("events.out.tfevents.*"))


def test_a_torchrl_policy_round_trips_through_a_scenario(trained_torchrl, tmp_path):
    from sim.marl.train import evaluate
    from sim.marl.torchrl_train import act

    spec = json.loads((trained_torchrl / "policy.json").read_text())
    assert spec["backend"] == "torchrl" and (trained_torchrl / "policy.pt").is_file()
    scenario, policy, _ = _replayed_in_a_scenario(trained_torchrl, trained_torchrl)
    # the loaded actor is the evaluated one: the same return as train.json recorded
    record = json.loads((trained_torchrl / "train.json").read_text())
    value = evaluate(scenario, lambda obs: act(policy.model.actor, obs), record["settings"])
    assert value == record["evaluation"]["return"]
    run = sim.run(scenario, runs_dir=tmp_path)
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"


def test_an_interrupted_torchrl_run_resumes_from_its_latest_checkpoint(tmp_path):
    _torchrl()
    from sim.marl.train import resume, train

    out = tmp_path / "run"
    train(SCENARIOS / "train_influencer.yaml", backend="torchrl", timesteps=512, worlds=4, device="cpu", seed=2,
          out=out, algo_params={"n_steps": 32, "n_epochs": 2}, checkpoint_every=128)
    record = json.loads((out / "train.json").read_text())
    record["status"], record["settings"]["timesteps"] = "interrupted", 1024
    (out / "train.json").write_text(json.dumps(record))
    resume(out)
    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "complete" and record["timesteps_done"] == 1024 and "resumed" in record
    assert (out / "checkpoints" / "policy_1024_steps.pt").is_file()


def test_torchrl_training_is_seeded_and_puts_the_callers_generator_back(tmp_path):
    _torchrl()
    from sim.marl.train import train

    def weights(seed: int, name: str) -> dict:
        train(SCENARIOS / "train_influencer.yaml", backend="torchrl", timesteps=256, worlds=2, device="cpu",
              seed=seed, out=tmp_path / name, algo_params={"n_steps": 16, "n_epochs": 1})
        return torch.load(str(tmp_path / name / "policy.pt"), weights_only=True)["actor"]

    first = weights(5, "a")
    torch.rand(10)  # the caller's generator moves on: the twin starts from another global state
    before = torch.get_rng_state()
    twin = weights(5, "b")
    assert torch.equal(torch.get_rng_state(), before)  # the caller's draws go on as if nothing had trained
    other = weights(6, "c")
    assert all(torch.equal(first[k], twin[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name, margin", [("train_advisor", 0.05), ("train_advisor_guardian", 0.1)])
def test_torchrl_learns_to_manipulate_and_to_protect_in_the_advice_protocol(name, margin, tmp_path):
    """The red team learns messages that shift its clients toward the harmful option; the guardian learns
    broadcasts that take the covert advisor's shift down (both against the random policy's return)."""
    _torchrl()
    from sim.marl.train import train

    out = train(SCENARIOS / f"{name}.yaml", backend="torchrl", timesteps=20000, worlds=64, device="cpu", seed=1,
                out=tmp_path / "run", algo_params={"n_steps": 8, "learning_rate": 1e-3})
    ev = json.loads((out / "train.json").read_text())["evaluation"]
    assert ev["return"] > ev["random_return"] + margin, ev
    if name == "train_advisor":
        assert json.loads((out / "policy.json").read_text())["action"] == "advice" and ev["return"] > 0.05, ev


# ---------------------------------------------------------------- RLlib


def test_the_rllib_env_equals_the_pettingzoo_env_on_its_stream():
    pytest.importorskip("ray.rllib", reason="the ray extra: pip install 'valuesim[ray]'")
    from sim.marl.rllib_env import RLlibEnv, env_config

    scenario = _tiny()
    env, single = RLlibEnv(env_config(scenario, seed=3, stream=5)), parallel_env(scenario, stream=5)
    obs, _ = env.reset()
    expected, _ = single.reset()
    generator = torch.Generator().manual_seed(1)
    for step in range(8):
        assert obs.keys() == expected.keys() and all(np.array_equal(obs[a], expected[a]) for a in obs)
        actions = {a: torch.rand(2, generator=generator).numpy() for a in env.possible_agents}
        obs, rewards, terminated, truncated, _ = env.step(actions)
        expected, single_rewards, _, single_truncated, _ = single.step(actions)
        assert rewards == single_rewards and truncated["__all__"] == (step == 7) and not terminated["__all__"]
    assert all(np.array_equal(obs[a], expected[a]) for a in obs)


@pytest.fixture(scope="module")
def trained_rllib(tmp_path_factory):
    pytest.importorskip("ray.rllib", reason="the ray extra: pip install 'valuesim[ray]'")
    import ray

    from sim.marl.train import train

    out = tmp_path_factory.mktemp("train_rllib") / "run"
    # a local Ray instance (ray.init(num_cpus=1, include_dashboard=False)) started and shut down by train
    train(SCENARIOS / "train_influencer.yaml", backend="rllib", timesteps=3840, worlds=8, device="cpu", seed=1,
          out=out, algo_params={"n_steps": 60, "batch_size": 120, "learning_rate": 1e-3})
    assert not ray.is_initialized()
    return out


def test_rllib_ppo_trains_a_few_iterations_and_beats_the_random_policy(trained_rllib):
    record = json.loads((trained_rllib / "train.json").read_text())
    assert record["status"] == "complete" and record["timesteps_done"] == 3840 and "ray" in record["versions"]
    ev = record["evaluation"]
    assert ev["return"] > ev["random_return"] + 0.15, ev
    evaluations = [json.loads(line) for line in (trained_rllib / "evaluations.jsonl").read_text().splitlines()]
    assert len(evaluations) == 8 and evaluations[-1]["return"] > evaluations[0]["return"]
    assert (trained_rllib / "checkpoints" / "policy_3840_steps").is_dir()


def test_an_rllib_policy_round_trips_through_a_scenario(trained_rllib, tmp_path):
    from sim.marl.rllib_train import _mean_action
    from sim.marl.spaces import from_symmetric
    from sim.marl.train import evaluate

    scenario, policy, _ = _replayed_in_a_scenario(trained_rllib, trained_rllib)
    record = json.loads((trained_rllib / "train.json").read_text())
    value = evaluate(scenario, lambda obs: from_symmetric(_mean_action(policy.model.module, obs, (2,)),
                                                          policy.action_space), record["settings"])
    assert value == record["evaluation"]["return"]


def test_an_interrupted_rllib_run_resumes_from_its_latest_checkpoint(trained_rllib, tmp_path):
    import shutil

    from sim.marl.train import resume

    out = tmp_path / "run"
    shutil.copytree(trained_rllib, out)
    record = json.loads((out / "train.json").read_text())
    record["status"], record["settings"]["timesteps"] = "interrupted", 4800
    (out / "train.json").write_text(json.dumps(record))
    resume(out)
    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "complete" and record["timesteps_done"] == 4800 and "resumed" in record


def test_valuesim_train_rllib_joins_the_ray_cluster_of_ray_address(ray_head, tmp_path):
    pytest.importorskip("ray.rllib", reason="the ray extra: pip install 'valuesim[ray]'")

    out = tmp_path / "run"
    # what a cluster user runs (README, RL training), in a process of its own, as a driver of the cluster. One
    # env runner: sampling happens in a Ray worker of the head's, another process that builds RLlibEnv from
    # env_config alone (the scenario's text) and imports sim.marl.rllib_env itself.
    command = [str(Path(sys.executable).with_name("valuesim")), "train", str(SCENARIOS / "train_influencer.yaml"),
               "--backend", "rllib", "--timesteps", "120", "--worlds", "2", "--device", "cpu", "--seed", "1",
               "--out", str(out), "--param", "n_steps=30", "--param", "batch_size=60", "--param", "n_epochs=2",
               "--param", "num_env_runners=1"]
    pid, returncode, output = run_driver(command, ray_head)
    assert returncode == 0, output[-4000:]
    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "complete" and record["timesteps_done"] == 120, record
    # it joined the head's GCS (Ray names the node by its own address, never 127.0.0.1), not an instance of its own
    assert record["ray"]["address"].endswith(f":{ray_head['port']}") and not record["ray"]["local"], record
    assert record["ray"]["nodes"] == 1
    # and the cluster has a record of it: the driver's log (named by its pid), and an env runner's
    logs = ray_head["temp"] / "session_latest" / "logs"
    names = sorted(p.name for p in logs.iterdir())
    assert [n for n in names if n.startswith("python-core-driver-") and n.endswith(f"_{pid}.log")], names
    # Ray writes ":actor_name:<class>" into the stdout of the worker that hosts an actor
    runners = [n for n in names if n.startswith("worker-") and n.endswith(".out")
               and ":actor_name:MultiAgentEnvRunner" in (logs / n).read_text(errors="replace")]
    assert runners, names
    assert (out / "policy_rllib").is_dir()
