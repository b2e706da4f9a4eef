"""Reading a run log back. Analysis reads only the run directory, never the code that produced it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from ..errors import RunDirError
from .runlog import TABLES, part_step, lock_held, pid_alive, read_events, read_manifest, read_parquet


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
        """``metrics`` or ``values`` as a pandas DataFrame (``as_="pandas"``) or an Arrow table (``"arrow"``)."""
        if name not in TABLES:
            raise RunDirError(f"unknown table {name!r} (tables: {', '.join(TABLES)})")
        file = self.path / f"{name}.parquet"
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
        return self.table("metrics", as_)

    def values(self, as_: str = "pandas"):
        return self.table("values", as_)

    def events(self) -> list[dict[str, Any]]:
        """The events in order; a last line cut short by a kill is skipped."""
        return read_events(self.path / "events.jsonl")


def open_run(path: str | Path) -> RunView:
    """Open a run directory written by ``valuesim run``."""
    path = Path(path)
    return RunView(path=path, manifest=read_manifest(path))
