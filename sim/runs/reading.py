"""Reading a run log back. Analysis reads only the run directory, never the code that produced it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..errors import RunDirError
from .runlog import TABLES, pid_alive, read_manifest


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
        if status == "running" and not pid_alive(self.manifest.get("pid"), self.manifest.get("host")):
            return "interrupted"
        return status

    @property
    def scenario(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "scenario.yaml").read_text(encoding="utf-8"))

    def table(self, name: str, as_: str = "pandas"):
        """``metrics`` or ``values`` as a pandas DataFrame (``as_="pandas"``) or an Arrow table (``"arrow"``)."""
        if name not in TABLES:
            raise RunDirError(f"unknown table {name!r} (tables: {', '.join(TABLES)})")
        file = self.path / f"{name}.parquet"
        if file.is_file():
            table = pq.read_table(file)
        else:  # a run still going: read the parts written so far
            parts = sorted((self.path / "parts").glob(f"{name}-*.parquet"))
            table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None
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
        file = self.path / "events.jsonl"
        if not file.is_file():
            return []
        events = []
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a last line cut short when the process was killed
                continue
        return events


def open_run(path: str | Path) -> RunView:
    """Open a run directory written by ``valuesim run``."""
    path = Path(path)
    return RunView(path=path, manifest=read_manifest(path))
