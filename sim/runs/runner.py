"""Running a scenario with a run log: the loop around the engine, checkpoints, interrupts, resume."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ..config.build import build_simulation
from ..core.engine import Simulation, StepError
from ..core.interval import Interval
from ..errors import Interrupted, RunDirError, RunFailed, ScenarioError
from ..llm.contract import BudgetExhausted
from .runlog import RunLog, new_run_dir, pid_alive, read_manifest, versions, git_commit
from ..config.scenario import Scenario, load_scenario, scenario_from_yaml

Progress = Callable[[int, int], None]


def run(scenario: Scenario | str | Path, *, seed: int | None = None, worlds: int | None = None,
        device: str = "cpu", out: str | Path | None = None, runs_dir: str | Path = "runs",
        overrides: list[str] | tuple[str, ...] = (), plugin_dirs: list[str | Path] | tuple = (),
        llm_cache: str = "readwrite", command: list[str] | None = None,
        progress: Progress | None = None) -> Path:
    """Run a scenario (a :class:`Scenario` or a path) and return its run directory.

    Everything that can be wrong with the input is checked (the world is
    built) before the run directory is created.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario, overrides, plugin_dirs)
    elif overrides or plugin_dirs:
        raise ValueError("overrides and plugin folders apply when loading a scenario from a path")
    if seed is not None:
        scenario = _with_flag(scenario, "seed", seed, minimum=0)
    if worlds is not None:
        scenario = _with_flag(scenario, "worlds", worlds, minimum=1)
    cache_path = Path(runs_dir) / ".llm-cache.sqlite"
    simulation = build_simulation(scenario, device=device, context=_llm_context(scenario, llm_cache, cache_path))
    path = Path(out) if out is not None else new_run_dir(Path(runs_dir), scenario.name, scenario.spec.seed)
    if path.exists() and any(path.iterdir()):
        raise RunDirError(f"--out {path}: the directory exists and is not empty")
    manifest = {
        "scenario": scenario.name, "source": scenario.source.name, "base_dir": str(scenario.base_dir),
        "seed": scenario.spec.seed, "seeds": simulation.generators.seeds, "worlds": simulation.world.b,
        "agents": simulation.world.n, "steps": scenario.spec.steps, "device": _device_name(device),
        "command": command if command is not None else sys.argv, "versions": versions(),
        "git_commit": git_commit(), "error": None, "llm_cache": {"mode": llm_cache, "path": str(cache_path)},
    }
    log = RunLog.create(path, scenario.to_yaml(), manifest, scenario.space.dimensions)
    log.event("started", 0, agents=simulation.world.n, worlds=simulation.world.b)
    _loop(simulation, log, progress, fresh=True)
    return path


def resume(run_dir: str | Path, *, device: str | None = None, command: list[str] | None = None,
           progress: Progress | None = None) -> Path:
    """Finish a stopped run from its checkpoint; the result equals an uninterrupted run."""
    path = Path(run_dir)
    manifest = read_manifest(path)
    status = manifest.get("status")
    if status == "complete":
        raise RunDirError(f"{path}: the run is already complete")
    if status == "running" and pid_alive(manifest.get("pid"), manifest.get("host")):
        raise RunDirError(f"{path}: the run is still going (pid {manifest['pid']})")
    checkpoint = path / "checkpoint" / "state.pt"
    if not checkpoint.is_file():
        raise RunDirError(f"{path}: no checkpoint to resume from (it stopped before the first one)")
    text = (path / "scenario.yaml").read_text(encoding="utf-8")
    scenario = scenario_from_yaml(text, str(path / "scenario.yaml"), base_dir=manifest["base_dir"])
    cache = manifest.get("llm_cache") or {"mode": "readwrite", "path": str(path.parent / ".llm-cache.sqlite")}
    simulation = build_simulation(scenario, worlds=manifest["worlds"], device=device or _device_arg(manifest),
                                  context=_llm_context(scenario, cache["mode"], Path(cache["path"])))
    simulation.restore(torch.load(checkpoint, weights_only=False))
    log = RunLog.reopen(path, scenario.space.dimensions, simulation.state.step,
                        command if command is not None else sys.argv)
    log.event("resumed", simulation.state.step, previous_status=status)
    _loop(simulation, log, progress, fresh=False)
    return path


def _loop(simulation: Simulation, log: RunLog, progress: Progress | None, fresh: bool) -> None:
    spec = simulation.scenario.spec
    steps, log_every = spec.steps, spec.log_every
    values_every = spec.log.values_every or log_every
    checkpoint_every = spec.log.checkpoint_every or 10 * log_every
    agents = _logged_agents(simulation)
    names = [g.name for g in simulation.world.groups]
    state = simulation.state

    def record(step: int) -> None:
        if step % log_every == 0 or step == steps or simulation.converged:
            log.add_readings(step, simulation.observe())
        if step % values_every == 0 or step == steps or simulation.converged:
            log.add_values(step, simulation.state.values, agents, names, simulation.world.group_index)

    def save() -> None:
        log.flush(simulation.state.step)
        log.checkpoint(simulation.snapshot())

    with _stop_on_signals() as stop:
        try:
            if fresh:
                log.add_events(simulation.take_events())
                record(0)
                save()
            while simulation.state.step < steps and not simulation.converged:
                simulation.step()
                state = simulation.state
                log.add_events(simulation.take_events())
                record(state.step)
                if progress:
                    progress(state.step, steps)
                if state.step % checkpoint_every == 0:
                    save()
                if stop.requested and state.step < steps and not simulation.converged:
                    save()
                    log.event("interrupted", state.step, signal=stop.requested)
                    log.finish("interrupted", state.step, error=f"stopped by {stop.requested}")
                    raise Interrupted(log.path, state.step)
        except Interrupted:
            raise
        except BudgetExhausted as exc:
            # the step was cut short: the last checkpoint is the state to resume from
            log.event("budget_spent", simulation.state.step + 1, error=str(exc))
            log.finish("interrupted", simulation.state.step, error=str(exc))
            raise Interrupted(log.path, simulation.state.step, reason=str(exc)) from None
        except StepError as exc:
            log.event("failed", simulation.state.step, error=str(exc))
            log.finish("failed", simulation.state.step, error=str(exc))
            raise RunFailed(f"run failed at {exc}; the log up to then is in {log.path}", log.path) from exc
        except KeyboardInterrupt:
            log.finish("interrupted", simulation.state.step, error="KeyboardInterrupt")
            raise Interrupted(log.path, simulation.state.step) from None
        except Exception as exc:
            log.finish("failed", simulation.state.step, error=f"{type(exc).__name__}: {exc}")
            raise
    if simulation.converged:
        log.event("converged", state.step, converged_at=state.converged_at.tolist())
    save()
    log.event("complete", state.step)
    log.finish("complete", state.step)


def _llm_context(scenario: Scenario, mode: str, cache_path: Path) -> dict:
    """The response cache, opened only when a group speaks through a language model."""
    if mode not in ("off", "read", "readwrite"):
        raise ScenarioError(f"must be off, read or readwrite, got {mode!r}", location="--llm-cache")
    if mode == "off" or not any(g.policy.name == "llm" for g in scenario.spec.population):
        return {"llm_cache": None, "llm_cache_mode": mode}
    from ..llm.cache import ResponseCache

    cache_path.parent.mkdir(parents=True, exist_ok=True)
    return {"llm_cache": ResponseCache(cache_path), "llm_cache_mode": mode}


def _logged_agents(simulation: Simulation) -> torch.Tensor:
    """Every agent up to ``log.values_max_agents``; beyond it a sample fixed by the seed (same on resume)."""
    n, limit = simulation.world.n, simulation.scenario.spec.log.values_max_agents
    if n <= limit:
        return torch.arange(n)
    g = torch.Generator().manual_seed(simulation.generators.seeds["log"])
    return torch.randperm(n, generator=g)[:limit].sort().values


class _Stop:
    requested: str | None = None


@contextmanager
def _stop_on_signals():
    """SIGTERM (and SIGINT) finish the current step, checkpoint, and mark the run interrupted."""
    stop = _Stop()
    handlers = {}

    def handler(signum, frame):
        stop.requested = signal.Signals(signum).name

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            handlers[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield stop
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def _with_flag(scenario: Scenario, field: str, value: int, minimum: int) -> Scenario:
    """The scenario with ``field`` set from the ``--<field>`` flag."""
    if value not in Interval(ge=minimum):
        raise ScenarioError(Interval(ge=minimum).message(value), location=f"--{field}")
    return Scenario(spec=scenario.spec.model_copy(update={field: value}), source=scenario.source,
                    base_dir=scenario.base_dir)


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return str(device)


def _device_arg(manifest: dict) -> str:
    return str(manifest.get("device", "cpu")).split(" ")[0]
