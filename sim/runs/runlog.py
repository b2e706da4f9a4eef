"""The run log: the contract between running and analysing.

```
runs/<scenario>__<UTC time>__s<seed>[__<tag>]/
  scenario.yaml     the fully resolved scenario
  manifest.json     seed, versions, git commit, device, command line, times, status; the value space, the
                    metric catalogue, every table's columns, how values were sampled, the network
  metrics.parquet   tidy rows: world, step, metric, group, dimension, value
  values.parquet    snapshots: world, step, agent, group, one column per value dimension
  agents.parquet    who the agents are: [world, stream,] agent, group, kind, policy, parameters, degree, logged
  network.parquet   the edge list: [world,] source, target (world: when worlds have their own graphs)
  events.jsonl      discrete events
  checkpoint/       the latest resumable state
```

``agents.parquet`` and ``network.parquet`` describe what does not change
during a run; they are written once, when the run is created. Each Parquet
file carries its own description in its schema metadata (see :mod:`.tables`).

Every file is written atomically (a temporary name, then a rename). While a
run is going, rows are buffered and written as numbered parts under
``parts/`` at each checkpoint, so parts and checkpoint always agree; when the
run stops for any reason the parts are gathered into the two Parquet files
(and, once complete, removed). A run whose process died keeps status
``running`` with a dead pid: ``valuesim resume`` treats it as interrupted.

The process writing a run holds an exclusive ``flock`` on ``.lock`` in its
directory for as long as it runs. Checkpoints hold data only (safetensors and
JSON, :mod:`.checkpoint`), never a pickle. The order of the writes is such
that a kill at any instant leaves a directory that reads correctly and
resumes to the same result: the tables are in place before the manifest says
``complete``, parts go only after, and a checkpoint swap cut in the middle is
put right by :func:`recover_checkpoint`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..core.contracts import Reading
from ..errors import RunDirError
from .checkpoint import save_checkpoint
from .tables import attribute_readings, with_metadata

TABLES = ("metrics", "values")  # written in parts while the run goes
STATIC_TABLES = ("agents", "network")  # written once, when the run is created
CHECKPOINT, NEW_CHECKPOINT, OLD_CHECKPOINT = "checkpoint", ".checkpoint.new", ".checkpoint.old"
# Events about the run itself; every other event belongs to a step and is replayed on resume.
LIFECYCLE = {"started", "resumed", "interrupted", "failed", "complete", "converged", "budget_spent"}
STATUSES = ("running", "complete", "failed", "interrupted")
METRICS_SCHEMA = pa.schema([("world", pa.int32()), ("step", pa.int64()), ("metric", pa.string()),
                            ("group", pa.string()), ("dimension", pa.string()), ("value", pa.float64())])


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, fill: Callable[[Path], None]) -> None:
    """Write ``path`` atomically: ``fill(tmp)`` writes a temporary name beside it, then a rename.

    Every file of a run log goes through here, so a failed write (a full disk)
    leaves the old file or none, never half of one, and no temporary behind.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            exc.filename = str(path)  # name the file meant, not its temporary (pyarrow names none)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, fill)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("valuesim", "torch", "numpy", "numba", "networkx", "pyarrow", "pandas", "pydantic", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the valuesim source tree when it is a git checkout (``+dirty`` if modified)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def new_run_dir(runs_dir: Path, scenario: str, seed: int, tag: str | None = None) -> Path:
    """``<scenario>__<UTC time>__s<seed>[__<tag>]`` under ``runs_dir`` (``-2``, ``-3``, ... if taken)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = runs_dir / (f"{scenario}__{stamp}__s{seed}" + (f"__{tag}" if tag else ""))
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class LLMTally:
    """How many language-model exchanges the run made and how many failed (a run whose every call
    failed has measured nothing and must not end ``complete``)."""

    def __init__(self) -> None:
        self.calls = self.failures = 0
        self.last_error: str | None = None

    def count(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if str(event.get("event", "")).startswith("llm_") and "error" in event:
                self.calls += 1
                if event["error"] is not None:
                    self.failures += 1
                    self.last_error = str(event["error"])

    @property
    def all_failed(self) -> bool:
        return self.calls > 0 and self.failures == self.calls


class RunLog:
    """Writes one run directory. Created with :meth:`create`, reopened for a resume with :meth:`reopen`."""

    def __init__(self, path: Path, manifest: dict[str, Any], dimensions: tuple[str, ...]):
        self.path = path
        self.manifest = manifest
        self.dimensions = dimensions
        self._metrics: list[pa.RecordBatch] = []
        self._values: list[pa.RecordBatch] = []
        self._events: list[str] = []
        self.llm = LLMTally()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, path: Path, scenario_yaml: str, manifest: dict[str, Any], dimensions,
               tables: dict[str, pa.Table] | None = None) -> "RunLog":
        """Start a run directory; ``tables`` (``agents``, ``network``) are written once, before the manifest."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "parts").mkdir(exist_ok=True)
        atomic_write_bytes(path / "scenario.yaml", scenario_yaml.encode("utf-8"))
        log = cls(path, {**manifest, "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                         "started": utc_now(), "ended": None, "step": 0}, tuple(dimensions))
        for name, table in (tables or {}).items():
            atomic_write_table(path / f"{name}.parquet", with_metadata(table, log.description(name)))
        log.write_manifest()
        return log

    def description(self, table: str) -> dict[str, Any]:
        """What a table's Parquet metadata says about it (from the manifest): its columns, the value space and,
        for ``metrics``, the metric catalogue."""
        m = self.manifest
        out = {"table": table, **(m.get("tables") or {}).get(table, {}), "value_space": m.get("value_space"),
               "scenario": m.get("scenario"), "seed": m.get("seed")}
        if table == "metrics":
            out["metric_catalogue"] = m.get("metric_catalogue")
        if table in ("values", "agents"):
            out["values_sample"] = m.get("values_sample")
        return out

    @classmethod
    def reopen(cls, path: Path, dimensions, step: int, command: list[str]) -> "RunLog":
        """Continue a stopped run from the checkpoint at ``step``: rows after it are dropped."""
        manifest = read_manifest(path)
        parts = path / "parts"
        kept = [part for part in parts.glob("*.parquet") if part_step(part) <= step]
        events = read_events(path / "events.jsonl")
        for part in kept:  # everything is read before anything changes, so a refusal leaves the run as it was
            _check_parquet(part)
        parts.mkdir(exist_ok=True)
        for table in TABLES:
            _table_back_to_parts(path, table, step)
            (path / f"{table}.parquet").unlink(missing_ok=True)
        for part in parts.glob("*.parquet"):
            if part_step(part) > step:
                part.unlink()
        _drop_events_after(path / "events.jsonl", step, events)
        manifest.update(status="running", pid=os.getpid(), host=socket.gethostname(), ended=None, error=None)
        manifest.setdefault("resumed", []).append({"at": utc_now(), "from_step": step, "command": command})
        log = cls(path, manifest, tuple(dimensions))
        log.llm.count([e for e in events if _step_of(e) <= step])
        log.write_manifest()
        return log

    def write_manifest(self) -> None:
        self.manifest["updated"] = utc_now()
        atomic_write_bytes(self.path / "manifest.json", (json.dumps(self.manifest, indent=2) + "\n").encode())

    def event(self, event: str, step: int, **fields: Any) -> None:
        """A lifecycle event, written at once (after the step events before it, to keep the order)."""
        self._events.append(json.dumps({"time": utc_now(), "step": step, "event": event, **fields}, default=str))
        self._write_events()

    def _write_events(self) -> None:
        if self._events:
            with open(self.path / "events.jsonl", "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in self._events))
            self._events.clear()

    def add_events(self, events: list[dict[str, Any]]) -> None:
        """Step events (LLM exchanges, ...), written with the next flush so they agree with the checkpoint."""
        self._events.extend(json.dumps({"time": utc_now(), **e}, default=str) for e in events)
        self.llm.count(events)

    # ------------------------------------------------------------------ rows

    def add_readings(self, step: int, readings: list[Reading]) -> None:
        catalogue = self.manifest.get("metric_catalogue")
        if catalogue is not None:  # the manifest is written again at the next checkpoint
            attribute_readings(catalogue, [r.metric for r in readings])
        for r in readings:
            value = r.value.detach().to("cpu", torch.float64)
            b, s, d = value.shape
            world = torch.arange(b, dtype=torch.int32).repeat_interleave(s * d)
            scope = [r.scopes[i] for i in range(s) for _ in range(d)] * b
            dim = [r.dimensions[j] for _ in range(s) for j in range(d)] * b
            self._metrics.append(pa.RecordBatch.from_arrays(
                [pa.array(world.numpy()), pa.array([step] * (b * s * d), pa.int64()),
                 pa.array([r.metric] * (b * s * d), pa.string()), pa.array(scope, pa.string()),
                 pa.array(dim, pa.string()), pa.array(value.reshape(-1).numpy())],
                schema=METRICS_SCHEMA))

    def add_values(self, step: int, values: torch.Tensor, agents: torch.Tensor, group_names: list[str],
                   group_index: torch.Tensor) -> None:
        """One snapshot of ``values[:, agents]`` for every world."""
        chosen = values[:, agents].detach().cpu()
        b, n, k = chosen.shape
        groups = pa.DictionaryArray.from_arrays(
            pa.array(group_index[agents].cpu().repeat(b).numpy().astype("int32")), pa.array(group_names))
        columns = {
            "world": pa.array(torch.arange(b, dtype=torch.int32).repeat_interleave(n).numpy()),
            "step": pa.array([step] * (b * n), pa.int64()),
            "agent": pa.array(agents.cpu().repeat(b).numpy().astype("int64")),
            "group": groups,
        }
        flat = chosen.reshape(b * n, k).numpy()
        for j, dim in enumerate(self.dimensions):
            columns[dim] = pa.array(flat[:, j])
        self._values.append(pa.RecordBatch.from_pydict(columns))

    def flush(self, step: int) -> None:
        """Write buffered rows as parts ending at ``step`` (each part atomic), and buffered events."""
        self._write_events()
        for name, buffer in (("metrics", self._metrics), ("values", self._values)):
            if buffer:
                atomic_write_table(self.path / "parts" / f"{name}-{step:012d}.parquet",
                                   with_metadata(pa.Table.from_batches(buffer), self.description(name)))
                buffer.clear()

    # ------------------------------------------------------------------ checkpoints and the end

    def checkpoint(self, snapshot: dict[str, Any]) -> None:
        """Replace ``checkpoint/`` with ``snapshot`` (tensors and plain data; see :mod:`.checkpoint`).

        The new folder is written in full beside the old one (``step`` last,
        which marks it whole), then swapped in by two renames; a kill at any
        point leaves ``checkpoint/``, ``.checkpoint.new/`` or ``.checkpoint.old/``
        that :func:`recover_checkpoint` puts right.
        """
        new, final, old = self.path / NEW_CHECKPOINT, self.path / CHECKPOINT, self.path / OLD_CHECKPOINT
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        save_checkpoint(new, snapshot, atomic_write_bytes)
        atomic_write_bytes(new / "step", f"{snapshot['step']}\n".encode())
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
        self.manifest["step"] = snapshot["step"]
        self.write_manifest()

    def finish(self, status: str, step: int, error: str | None = None) -> None:
        """Gather the parts into the Parquet files and record how the run ended.

        The order is what makes a kill anywhere here harmless: the tables are
        in place before the manifest says ``complete``, and the parts are
        removed only after it does (a run still ``running`` keeps its parts,
        which a resume gathers again).
        """
        self.flush(step)
        gather_parts(self.path)
        self.manifest.update(status=status, ended=utc_now(), error=error, last_step=step)
        self.write_manifest()
        if status == "complete":
            shutil.rmtree(self.path / "parts", ignore_errors=True)

    def record_stop(self, status: str, step: int, error: str) -> bool:
        """Best effort, for when writing itself failed (a full disk): say so in the events and the manifest
        without gathering anything. Returns whether the manifest could be written."""
        try:
            self.event(status, step, error=error)
        except OSError:
            self._events.clear()
        self.manifest.update(status=status, ended=utc_now(), error=error, last_step=step)
        try:
            self.write_manifest()
            return True
        except OSError:
            return False


def recover_checkpoint(path: Path) -> None:
    """Put right what a kill inside :meth:`RunLog.checkpoint` leaves: a whole ``.checkpoint.new`` with no
    ``checkpoint`` becomes it (else ``.checkpoint.old`` does), and the leftovers go."""
    new, final, old = path / NEW_CHECKPOINT, path / CHECKPOINT, path / OLD_CHECKPOINT
    if not final.exists():
        if (new / "step").is_file():
            os.replace(new, final)
        elif old.is_dir():
            os.replace(old, final)
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)


def part_step(part: Path) -> int:
    try:
        return int(part.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise RunDirError(f"{part}: not a part file of valuesim (parts are named <table>-<step>.parquet)") from None


def _check_parquet(file: Path) -> None:
    try:
        pq.read_metadata(file)
    except (pa.ArrowException, OSError) as exc:
        raise RunDirError(f"{file}: not a readable Parquet file ({_one_line(exc)})") from None


def read_parquet(file: Path) -> pa.Table:
    """A table of the run log, or a one-line :class:`RunDirError` naming the file."""
    try:
        return pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise RunDirError(f"{file}: not a readable Parquet file ({_one_line(exc)})") from None


def _table_back_to_parts(path: Path, table: str, step: int) -> None:
    """A gathered table whose parts are gone (a run log of an older valuesim killed as it finished)
    becomes a part again, so that resuming cannot lose its rows."""
    file = path / f"{table}.parquet"
    if not file.is_file() or any((path / "parts").glob(f"{table}-*.parquet")):
        return
    rows = read_parquet(file)
    rows = rows.filter(pc.less_equal(rows["step"], step))
    atomic_write_table(path / "parts" / f"{table}-{step:012d}.parquet", rows)


def read_events(file: Path) -> list[dict[str, Any]]:
    """The events of ``events.jsonl``. A last line cut short by a kill is skipped; a file that is not
    text, or a bad line before the last, is a one-line :class:`RunDirError`."""
    if not file.is_file():
        return []
    try:
        lines = file.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{file}: not a text file of JSON lines (byte {exc.start} is not UTF-8)") from None
    events = []
    for number, line in enumerate(lines, start=1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            if number == len(lines):
                continue  # a line cut short by a kill
            raise RunDirError(f"{file}:{number} not a JSON event (the file is corrupt)")
        events.append(event)
    return events


def _drop_events_after(file: Path, step: int, events: list[dict[str, Any]]) -> None:
    """Keep lifecycle events and the step events up to ``step`` (the rest will be made again)."""
    if not file.is_file():
        return
    kept = [json.dumps(e, default=str) + "\n" for e in events
            if e.get("event") in LIFECYCLE or _step_of(e) <= step]
    atomic_write_bytes(file, "".join(kept).encode("utf-8"))


def _step_of(event: dict[str, Any]) -> int:
    step = event.get("step", 0)
    return step if isinstance(step, int) else 0


def gather_parts(path: Path) -> None:
    """Concatenate ``parts/<table>-*.parquet`` into ``<table>.parquet`` (atomically), in step order."""
    for name in TABLES:
        parts = sorted((path / "parts").glob(f"{name}-*.parquet"), key=part_step)
        if not parts:
            continue

        def fill(tmp: Path, parts=parts) -> None:
            writer = None
            try:
                for part in parts:
                    table = read_parquet(part)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table.cast(writer.schema))
            finally:
                if writer is not None:
                    writer.close()

        atomic_write(path / f"{name}.parquet", fill)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict; anything that is not a valuesim manifest is a one-line :class:`RunDirError`."""
    file = Path(path) / "manifest.json"
    try:
        if not file.is_file():
            raise RunDirError(f"{path}: not a run directory (no manifest.json)")
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise RunDirError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{file}: manifest is not text (binary bytes)") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{file}:{exc.lineno} manifest is not valid JSON: {exc.msg}") from None
    if not isinstance(manifest, dict):
        raise RunDirError(f"{file}: manifest is a JSON {type(manifest).__name__}, not an object")
    if manifest.get("status") not in STATUSES:
        raise RunDirError(f"{file}: manifest has no valid status (one of {', '.join(STATUSES)}), "
                          f"got {manifest.get('status')!r}")
    return manifest


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def pid_alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.lock``, held by the one process that writes the run.

    The kernel lets go when the process ends however it ends, so a killed run
    never leaves a stale lock. The file holds the holder's pid for the message
    a second process gets. Use it as a context manager.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        file = self.path / LOCK_FILE
        self._fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(self._fd)
            os.close(self._fd)
            raise RunDirError(f"{self.path}: another valuesim process ({holder}) is running or resuming this run; "
                              "wait for it to end or stop it") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    try:
        words = os.pread(fd, 200, 0).decode("ascii", "replace").split()
    except OSError:
        words = []
    return f"pid {words[0]}" + (f" on {words[1]}" if len(words) > 1 and words[1] != socket.gethostname() else "") \
        if words else "pid unknown"


def lock_held(path: Path) -> bool | None:
    """Whether a process holds the run's lock now; ``None`` when that cannot be told (no lock file: a run
    of an older valuesim, or a folder one may not open)."""
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
