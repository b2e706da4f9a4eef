"""Running a scenario with a run log: the loop around the engine, checkpoints, interrupts, resume."""

from __future__ import annotations

import errno
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ..config.build import build_simulation
from ..core.engine import Simulation, StepError
from ..core.interval import Interval
from ..errors import Interrupted, RunDirError, RunFailed, RunLogWriteError, ScenarioError
from ..llm.contract import BudgetExhausted
from .checkpoint import load_checkpoint
from .tables import (agents_per_world, agents_table, metric_catalogue, network_manifest, network_table,
                     table_schemas, values_sample)
from .runlog import (CHECKPOINT, LOCK_FILE, RunLock, RunLog, new_run_dir, pid_alive, read_manifest,
                     recover_checkpoint, versions, git_commit)
from ..config.scenario import Scenario, load_scenario, scenario_from_yaml
from ..config.schema import MAX_SEED

Progress = Callable[[int, int], None]


def run(scenario: Scenario | str | Path, *, seed: int | None = None, worlds: int | None = None,
        device: str = "cpu", out: str | Path | None = None, runs_dir: str | Path = "runs",
        overrides: list[str] | tuple[str, ...] = (), plugin_dirs: list[str | Path] | tuple = (),
        llm_cache: str = "readwrite", command: list[str] | None = None,
        progress: Progress | None = None, tag: str | None = None) -> Path:
    """Run a scenario (a :class:`Scenario` or a path) and return its run directory.

    Everything that can be wrong with the input is checked (the world is
    built) before the run directory is created. ``tag`` is a label of the
    run, kept in the manifest and ending the directory's name
    (``<scenario>__<UTC time>__s<seed>__<tag>``).
    """
    _check_tag(tag)
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario, overrides, plugin_dirs)
    elif overrides or plugin_dirs:
        raise ValueError("overrides and plugin folders apply when loading a scenario from a path")
    if seed is not None:
        scenario = _with_flag(scenario, "seed", seed, minimum=0)
    if worlds is not None:
        scenario = _with_flag(scenario, "worlds", worlds, minimum=1)
    cache_path = Path(runs_dir) / ".llm-cache.sqlite"
    _phase(progress, _building(scenario))
    simulation = _build_or_forget_cache(scenario, device, llm_cache, cache_path)
    logged = _logged_agents(simulation)
    tables = {"agents": agents_table(simulation, logged), "network": network_table(simulation.world.network)}
    made, path = _make_run_dir(out, runs_dir, scenario, tag)
    spec = scenario.spec
    manifest = {
        "scenario": scenario.name, "tag": tag, "source": scenario.source.name, "base_dir": str(scenario.base_dir),
        "seed": spec.seed, "streams": simulation.rng.stream.tolist(), "worlds": simulation.world.b,
        "agents": simulation.world.n, "steps": spec.steps, "overrides": list(overrides),
        "device": _device_name(device),
        "command": command if command is not None else sys.argv, "versions": versions(),
        "git_commit": git_commit(), "error": None, "llm_cache": {"mode": llm_cache, "path": str(cache_path)},
        "value_space": {"name": scenario.space.name, "dimensions": list(scenario.space.dimensions)},
        "metric_catalogue": metric_catalogue(simulation),
        "values_sample": values_sample(simulation.world.n, logged),
        "network": network_manifest(spec.network, simulation.world.network),
        "agents_per_world": agents_per_world(simulation),
        # the scenario's counterfactual twins: which worlds they are (world b's twin is b + worlds / 2 and back)
        "counterfactual_worlds": [] if simulation.world.counterfactual is None
        else simulation.world.counterfactual.nonzero().flatten().tolist(),
        "counterfactual_groups": list(spec.counterfactual),
        "tables": table_schemas(scenario.space.dimensions, agents_per_world(simulation),
                                not simulation.world.network.shared),
    }
    lock = None
    try:  # nothing is left half-written when the folder turns out not to be writable
        lock = RunLock(path)
        log = RunLog.create(path, scenario.to_yaml(), manifest, scenario.space.dimensions, tables)
        log.event("started", 0, agents=simulation.world.n, worlds=simulation.world.b)
    except OSError as exc:
        if lock is not None:
            lock.release()
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise RunDirError(f"{path}: cannot write the run log there ({_reason(exc)})") from None
    with lock:
        _loop(simulation, log, progress, fresh=True)
    return path


def resume(run_dir: str | Path, *, device: str | None = None, command: list[str] | None = None,
           progress: Progress | None = None) -> Path:
    """Finish a stopped run from its checkpoint; the result equals an uninterrupted run.

    The run directory is locked for the whole resume: a second process is
    refused with the holder's pid.
    """
    path = Path(run_dir)
    manifest = read_manifest(path)  # a folder that is not a run gets no lock file
    locked_before = (path / LOCK_FILE).exists()
    try:
        lock = RunLock(path)
    except OSError as exc:
        raise RunDirError(f"{path}: cannot lock the run directory ({_reason(exc)})") from None
    with lock:
        manifest = read_manifest(path)  # as it is now that no one else writes it
        status = manifest["status"]
        if status == "complete":
            raise RunDirError(f"{path}: the run is already complete")
        if status == "running" and not locked_before and pid_alive(manifest.get("pid"), manifest.get("host")):
            raise RunDirError(f"{path}: the run is still going (pid {manifest['pid']})")  # an older valuesim's
        recover_checkpoint(path)
        # a run stopped before its first checkpoint kept nothing of its steps: it starts again from the beginning
        fresh = not (path / CHECKPOINT).is_dir()
        snapshot = None if fresh else load_checkpoint(path / CHECKPOINT)
        scenario = stored_scenario(path, _field(path, manifest, "base_dir", str))
        cache = manifest.get("llm_cache") or {"mode": "readwrite", "path": str(path.parent / ".llm-cache.sqlite")}
        worlds = _field(path, manifest, "worlds", int) // (2 if scenario.spec.counterfactual else 1)  # twins
        _phase(progress, _building(scenario))
        simulation = build_simulation(scenario, worlds=worlds,
                                      device=device or _device_arg(manifest),
                                      context=_llm_context(scenario, cache["mode"], Path(cache["path"])))
        if snapshot is not None:
            _restore(simulation, snapshot, path / CHECKPOINT)
        log = RunLog.reopen(path, scenario.space.dimensions, simulation.state.step - fresh,
                            command if command is not None else sys.argv)
        log.event("resumed", simulation.state.step, previous_status=status,
                  **({"from_the_beginning": "it stopped before its first checkpoint"} if fresh else {}))
        _loop(simulation, log, progress, fresh=fresh)
    return path


def stored_scenario(path: Path, base_dir: str) -> Scenario:
    """The resolved scenario a run directory keeps (``scenario.yaml``), for resuming it or analysing it again."""
    file = path / "scenario.yaml"
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RunDirError(f"{file}: missing, so the run cannot be rebuilt") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{file}: not a text file (the scenario is corrupt)") from None
    return scenario_from_yaml(text, str(file), base_dir=base_dir)


def _field(path: Path, manifest: dict, key: str, kind: type):
    value = manifest.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RunDirError(f"{path / 'manifest.json'}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _restore(simulation: Simulation, snapshot: dict, where: Path) -> None:
    """Load a checkpoint that decoded but may still not fit (tampered with, or from another version)."""
    try:
        simulation.restore(snapshot)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        raise RunDirError(f"{where}: the checkpoint does not fit this run ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:160]})") from None


_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def _check_tag(tag: str | None) -> None:
    if tag is not None and (not isinstance(tag, str) or not _TAG.match(tag)):
        raise ScenarioError("must be 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                            f"(it ends the run directory's name), got {tag!r}", location="--tag")


def _make_run_dir(out: str | Path | None, runs_dir: str | Path, scenario: Scenario,
                  tag: str | None = None) -> tuple[Path | None, Path]:
    """Create the run directory; returns the topmost folder this made (removed again if nothing can be
    written there) and the directory."""
    where = out if out is not None else runs_dir
    try:
        path = Path(out) if out is not None else new_run_dir(Path(runs_dir), scenario.name, scenario.spec.seed,
                                                             tag)
        if path.is_dir():
            if any(path.iterdir()):
                raise RunDirError(f"--out {path}: the directory exists and is not empty")
            return None, path
        top = path
        while not top.parent.exists():
            top = top.parent
        path.mkdir(parents=True)
        return top, path
    except OSError as exc:
        raise RunDirError(f"{where}: cannot create the run directory there ({_reason(exc)})") from None


_REASONS = {errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EEXIST: "a file of that name exists",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system", errno.ENAMETOOLONG: "a name in the path is too long",
            errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


def _reason(exc: OSError) -> str:
    return _REASONS.get(exc.errno) or exc.strerror or " ".join(str(exc).split())[:160] or type(exc).__name__


def _loop(simulation: Simulation, log: RunLog, progress: Progress | None, fresh: bool) -> None:
    """Run the steps; a file of the log that cannot be written (a full disk) stops the run with one line,
    leaving it resumable from its last checkpoint."""
    try:
        _steps(simulation, log, progress, fresh)
    except OSError as exc:
        raise _write_failed(log, simulation.state.step, exc) from None


def _write_failed(log: RunLog, step: int, exc: OSError) -> RunLogWriteError:
    error = f"cannot write {exc.filename or log.path}: {_reason(exc)}"
    recorded = log.record_stop("failed", step, error)
    note = "" if recorded else " (the manifest could not be updated either)"
    return RunLogWriteError(f"{error}; the run stopped at step {step}{note}; once there is room, continue it "
                            f"from its last checkpoint (step {log.manifest.get('step', 0)}): "
                            f"valuesim resume {log.path}", log.path)


def _steps(simulation: Simulation, log: RunLog, progress: Progress | None, fresh: bool) -> None:
    spec = simulation.scenario.spec
    steps, log_every = spec.steps, spec.log_every
    values_every = spec.log.values_every or log_every
    checkpoint_every = spec.log.checkpoint_every or 10 * log_every
    agents = _logged_agents(simulation)
    names = [g.name for g in simulation.world.groups]
    state = simulation.state
    watch = _Watch()

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
            if simulation.state.step < steps and not simulation.converged:
                _phase(progress, f"step {simulation.state.step + 1} of {steps}", simulation.state.step, steps)
            while simulation.state.step < steps and not simulation.converged:
                before = simulation.state.values.clone() if _last_step_watched(simulation, steps) else None
                simulation.step()
                if before is not None:
                    watch.moved = float((simulation.state.values - before).abs().max())
                state = simulation.state
                events = simulation.take_events()
                watch.count(events)
                log.add_events(events)
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
    _warn(log, simulation, watch, steps)
    if log.llm.all_failed:  # fallbacks all the way: the run measured nothing of the model
        error = (f"every one of the {log.llm.calls} language-model calls failed "
                 f"(the last: {' '.join(log.llm.last_error.split())[:200]})")
        log.event("failed", state.step, error=error)
        log.finish("failed", state.step, error=error)
        raise RunFailed(f"{error}; the run is marked failed: {log.path}", log.path)
    log.event("complete", state.step)
    log.finish("complete", state.step)


def _phase(progress, text: str, step: int = 0, total: int = 0) -> None:
    """Tell a progress display what is going on before a step completes (``progress.phase``, if it has one)."""
    phase = getattr(progress, "phase", None)
    if phase is not None:
        phase(text, step, total)


def _building(scenario: Scenario) -> str:
    spec = scenario.spec
    models = sorted({g.policy.params["persona"]["backend"]["name"] for g in spec.population if g.policy.name == "llm"}
                    - {"scripted"})
    loading = f" and loading the language model ({', '.join(models)})" if models else ""
    return f"building the world ({spec.num_agents:,} agents){loading}"


def _build_or_forget_cache(scenario: Scenario, device: str, mode: str, cache_path: Path) -> Simulation:
    """Build the world; a scenario refused while it is built leaves no response cache (nor runs dir) behind."""
    existed = {p: p.exists() for p in (cache_path.parent, cache_path)}
    context = _llm_context(scenario, mode, cache_path)
    try:
        return build_simulation(scenario, device=device, context=context)
    except BaseException:
        if context.get("llm_cache") is not None:
            context["llm_cache"].close()
        if not existed[cache_path]:
            for leftover in (cache_path, *(cache_path.with_name(cache_path.name + x) for x in ("-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
        if not existed[cache_path.parent]:
            shutil.rmtree(cache_path.parent, ignore_errors=True)
        raise


class _Watch:
    """What the end of a run warns about: value read-outs that were degenerate, and how much the last step moved."""

    def __init__(self) -> None:
        self.readouts = self.degenerate = 0
        self.moved: float | None = None

    def count(self, events: list[dict]) -> None:
        for event in events:
            if event.get("event") == "llm_message":  # every message is read out into a value vector
                self.readouts += 1
                self.degenerate += bool(event.get("degenerate"))


def _last_step_watched(simulation: Simulation, steps: int) -> bool:
    return simulation.stop_tolerance is not None and simulation.state.step == steps - 1


def _warn(log: RunLog, simulation: Simulation, watch: _Watch, steps: int) -> None:
    """Say, in an event and in the manifest's ``warnings`` (which the CLI prints), what the run did not do."""
    warnings = []
    tolerance = simulation.stop_tolerance
    if tolerance is not None and not simulation.converged and simulation.state.step >= steps:
        settled = int((simulation.state.converged_at >= 0).sum())
        moved = f" (the last step still moved a value by {watch.moved:.2g})" if watch.moved is not None else ""
        message = (f"the run ended at steps ({steps}) without reaching stop.tolerance {tolerance:g}: "
                   f"{settled} of {simulation.world.b} worlds settled{moved}")
        log.event("not_converged", simulation.state.step, tolerance=tolerance, worlds_settled=settled,
                  last_move=watch.moved)
        warnings.append(message)
    if watch.degenerate:
        message = (f"{watch.degenerate} of {watch.readouts} value read-outs were degenerate (every rating equal, "
                   "zero or off the scale) and fell back to the speaker's own values; see 'reader' in events.jsonl")
        log.event("degenerate_readouts", simulation.state.step, count=watch.degenerate, of=watch.readouts)
        warnings.append(message)
    if warnings:
        log.manifest["warnings"] = warnings


def _llm_context(scenario: Scenario, mode: str, cache_path: Path) -> dict:
    """The response cache, opened only when a group speaks through a language model."""
    if mode not in ("off", "read", "readwrite"):
        raise ScenarioError(f"must be off, read or readwrite, got {mode!r}", location="--llm-cache")
    if mode == "off" or not any(g.policy.name == "llm" for g in scenario.spec.population):
        return {"llm_cache": None, "llm_cache_mode": mode}
    from ..llm.cache import ResponseCache

    return {"llm_cache": ResponseCache(cache_path), "llm_cache_mode": mode}


def _logged_agents(simulation: Simulation) -> torch.Tensor:
    """Every agent up to ``log.values_max_agents``; beyond it a sample fixed by the seed (same on resume)."""
    n, limit = simulation.world.n, simulation.scenario.spec.log.values_max_agents
    if n <= limit:
        return torch.arange(n)
    keys = simulation.rng.select(slice(0, 1)).at(-1).uniform("log/values_sample", (1, n)).cpu()[0]
    return keys.argsort()[:limit].sort().values


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
    if field == "seed" and value > MAX_SEED:
        raise ScenarioError(f"must be at most 2**64 - 1, got {value}", location="--seed")
    return Scenario(spec=scenario.spec.model_copy(update={field: value}), source=scenario.source,
                    base_dir=scenario.base_dir)


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return str(device)


def _device_arg(manifest: dict) -> str:
    return str(manifest.get("device", "cpu")).split(" ")[0]
