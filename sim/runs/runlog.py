"""The run log: the contract between running and analysing.

```
runs/<scenario>__<UTC time>__s<seed>/
  scenario.yaml     the fully resolved scenario
  manifest.json     seed, versions, git commit, device, command line, times, status
  metrics.parquet   tidy rows: world, step, metric, group, dimension, value
  values.parquet    snapshots: world, step, agent, group, one column per value dimension
  events.jsonl      discrete events
  checkpoint/       the latest resumable state
```

Every file is written atomically (a temporary name, then a rename). While a
run is going, rows are buffered and written as numbered parts under
``parts/`` at each checkpoint, so parts and checkpoint always agree; when the
run stops for any reason the parts are gathered into the two Parquet files
(and, once complete, removed). A run whose process died keeps status
``running`` with a dead pid: ``valuesim resume`` treats it as interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..core.contracts import Reading

TABLES = ("metrics", "values")
# Events about the run itself; every other event belongs to a step and is replayed on resume.
LIFECYCLE = {"started", "resumed", "interrupted", "failed", "complete", "converged", "budget_spent"}
STATUSES = ("running", "complete", "failed", "interrupted")
METRICS_SCHEMA = pa.schema([("world", pa.int32()), ("step", pa.int64()), ("metric", pa.string()),
                            ("group", pa.string()), ("dimension", pa.string()), ("value", pa.float64())])


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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


def new_run_dir(runs_dir: Path, scenario: str, seed: int) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = runs_dir / f"{scenario}__{stamp}__s{seed}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunLog:
    """Writes one run directory. Created with :meth:`create`, reopened for a resume with :meth:`reopen`."""

    def __init__(self, path: Path, manifest: dict[str, Any], dimensions: tuple[str, ...]):
        self.path = path
        self.manifest = manifest
        self.dimensions = dimensions
        self._metrics: list[pa.RecordBatch] = []
        self._values: list[pa.RecordBatch] = []
        self._events: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, path: Path, scenario_yaml: str, manifest: dict[str, Any], dimensions) -> "RunLog":
        path.mkdir(parents=True, exist_ok=True)
        (path / "parts").mkdir(exist_ok=True)
        atomic_write_bytes(path / "scenario.yaml", scenario_yaml.encode("utf-8"))
        log = cls(path, {**manifest, "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                         "started": utc_now(), "ended": None, "step": 0}, tuple(dimensions))
        log.write_manifest()
        return log

    @classmethod
    def reopen(cls, path: Path, dimensions, step: int, command: list[str]) -> "RunLog":
        """Continue a stopped run from the checkpoint at ``step``: rows after it are dropped."""
        manifest = read_manifest(path)
        for table in TABLES:
            (path / f"{table}.parquet").unlink(missing_ok=True)
        parts = path / "parts"
        parts.mkdir(exist_ok=True)
        for part in parts.glob("*.parquet"):
            if _part_step(part) > step:
                part.unlink()
        _drop_events_after(path / "events.jsonl", step)
        manifest.update(status="running", pid=os.getpid(), host=socket.gethostname(), ended=None, error=None)
        manifest.setdefault("resumed", []).append({"at": utc_now(), "from_step": step, "command": command})
        log = cls(path, manifest, tuple(dimensions))
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

    # ------------------------------------------------------------------ rows

    def add_readings(self, step: int, readings: list[Reading]) -> None:
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
                                   pa.Table.from_batches(buffer))
                buffer.clear()

    # ------------------------------------------------------------------ checkpoints and the end

    def checkpoint(self, snapshot: dict[str, Any]) -> None:
        """Replace ``checkpoint/`` atomically with ``snapshot`` (a dict of tensors and numbers)."""
        new, final, old = self.path / ".checkpoint.new", self.path / "checkpoint", self.path / ".checkpoint.old"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        torch.save(snapshot, new / "state.pt")
        (new / "step").write_text(f"{snapshot['step']}\n")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
        self.manifest["step"] = snapshot["step"]
        self.write_manifest()

    def finish(self, status: str, step: int, error: str | None = None) -> None:
        """Gather the parts into the Parquet files and record how the run ended."""
        self.flush(step)
        gather_parts(self.path)
        if status == "complete":
            shutil.rmtree(self.path / "parts", ignore_errors=True)
        self.manifest.update(status=status, ended=utc_now(), error=error, last_step=step)
        self.write_manifest()


def _part_step(part: Path) -> int:
    return int(part.stem.rsplit("-", 1)[1])


def _drop_events_after(file: Path, step: int) -> None:
    """Keep lifecycle events and the step events up to ``step`` (the rest will be made again)."""
    if not file.is_file():
        return
    kept = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if event.get("event") in LIFECYCLE or event.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_bytes(file, "".join(kept).encode("utf-8"))


def gather_parts(path: Path) -> None:
    """Concatenate ``parts/<table>-*.parquet`` into ``<table>.parquet`` (atomically), in step order."""
    for name in TABLES:
        parts = sorted((path / "parts").glob(f"{name}-*.parquet"), key=_part_step)
        if not parts:
            continue
        tmp = path / f".{name}.parquet.tmp"
        writer = None
        for part in parts:
            table = pq.read_table(part)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
        writer.close()
        os.replace(tmp, path / f"{name}.parquet")


def read_manifest(path: Path) -> dict[str, Any]:
    from ..errors import RunDirError

    file = Path(path) / "manifest.json"
    if not file.is_file():
        raise RunDirError(f"{path}: not a run directory (no manifest.json)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{file}:{exc.lineno} manifest is not valid JSON: {exc.msg}") from None


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
