"""The plugin kinds and how a name that is not there is reported.

A kind is listed here once its contract is written (``sim.core.contracts``,
``sim.llm.contract``); each kind's plugins are found through the entry-point
group ``valuesim.<kind>``.
"""

from __future__ import annotations

import difflib

KINDS = ("policies", "dynamics", "networks", "protocols", "alignment", "metrics", "llm_backends", "value_readers")

SINGULAR = {"policies": "policy", "dynamics": "dynamics", "networks": "network generator",
            "protocols": "protocol", "alignment": "alignment rule", "metrics": "metric",
            "llm_backends": "LLM backend", "value_readers": "value reader"}


def unknown_name_message(kind: str, name: str, known: list[str], where: str = "installed") -> str:
    """"unknown dynamics 'defuant'; did you mean 'deffuant'? (installed: ...)"."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {SINGULAR.get(kind, kind)} {name!r}{hint} ({where}: {', '.join(known) or 'none'})"
