"""``valuesim new plugin KIND NAME``: an installable plugin package, ready to edit.

:func:`scaffold_plugin` writes ``<directory>/valuesim-<name>/``:

- ``pyproject.toml``: the distribution ``valuesim-<name>`` and the entry point
  that makes the plugin findable (group ``valuesim.<kind>``, ``name`` ->
  ``valuesim_<name>.plugin:<ClassName>``);
- ``valuesim_<name>/plugin.py``: a small working example of the kind's
  contract (``sim.contracts``), documented, to be edited into the real thing;
- ``tests/test_plugin.py``: the contract check shipped with valuesim
  (``sim.checks.check_<kind>``) and a small scenario that uses the plugin;
- ``README.md``: install, check, use in a scenario.

The templates are data files beside this module (``templates/``: the files
every package gets, and one folder per kind), as ``string.Template`` text
(``$name``, ``$class_name``, ...; a literal dollar is ``$$``).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ..errors import ValuesimError

# What a user may type for a kind -> the registry's kind.
KIND_WORDS = {
    "policy": "policies", "policies": "policies",
    "dynamics": "dynamics", "dynamic": "dynamics",
    "metric": "metrics", "metrics": "metrics",
    "network": "networks", "networks": "networks",
    "protocol": "protocols", "protocols": "protocols",
    "alignment": "alignment", "alignment_rule": "alignment",
}
SINGULAR = {"policies": "policy", "dynamics": "dynamics", "metrics": "metric", "networks": "network",
            "protocols": "protocol", "alignment": "alignment"}
# Starts with a letter and ends with a letter or digit, so that the distribution name is valid too.
NAME_PATTERN = re.compile(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?")


def scaffold_plugin(kind: str, name: str, directory: Path | str = ".") -> Path:
    """Write the plugin package ``<directory>/valuesim-<name>/`` and return its path.

    ``kind``: ``policies``, ``dynamics``, ``metrics``, ``networks``, ``protocols`` or ``alignment`` (or the
    singular word). ``name``: the plugin's name in scenarios, a Python
    identifier such as ``my_policy``. Raises :class:`ValuesimError` for a bad
    kind or name, a name an installed plugin of that kind already has, or a
    target that already exists (nothing is ever overwritten).
    """
    kind = normalise_kind(kind)
    check_name(name)
    _refuse_taken_name(kind, name)
    directory = Path(directory)
    root = directory / f"valuesim-{name.replace('_', '-')}"
    if root.exists() or root.is_symlink():
        raise ValuesimError(f"{root} already exists; refusing to overwrite it (pick another --dir or name)")
    directory.mkdir(parents=True, exist_ok=True)
    # Written into a temporary folder beside the target and renamed: no half-written package is left behind.
    staging = Path(tempfile.mkdtemp(prefix=".valuesim-new-", dir=directory))
    try:
        for relative, text in package_files(kind, name).items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if root.exists():
            raise ValuesimError(f"{root} already exists; refusing to overwrite it (pick another --dir or name)")
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def normalise_kind(kind: str) -> str:
    """``policy`` -> ``policies``, ``metric`` -> ``metrics``, ...; anything else is a ValuesimError."""
    word = kind.strip().lower()
    if word in KIND_WORDS:
        return KIND_WORDS[word]
    close = difflib.get_close_matches(word, list(KIND_WORDS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValuesimError(f"cannot make a plugin of kind {kind!r}{hint} "
                        "(kinds: policy, dynamics, metric, network, protocol, alignment)")


def check_name(name: str) -> None:
    """A plugin name must be a Python identifier that starts with a letter and ends with a letter or digit."""
    if NAME_PATTERN.fullmatch(name):
        return
    suggestion = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    suggestion = suggestion if NAME_PATTERN.fullmatch(suggestion) else ""
    hint = f"; did you mean {suggestion!r}?" if suggestion and suggestion != name else ""
    raise ValuesimError(f"a plugin name must be a Python identifier of letters, digits and underscores, "
                        f"starting with a letter and not ending with '_', got {name!r}{hint}")


def _refuse_taken_name(kind: str, name: str) -> None:
    # Two installed plugins with one name: the registry keeps only the first, so say so now.
    from .. import registry

    taken = registry.entry_points(kind).get(name)
    if taken is not None:
        dist = getattr(taken.dist, "name", "an unknown distribution")
        raise ValuesimError(f"an installed {SINGULAR[kind]} plugin is already named {name!r} "
                            f"({taken.value} from {dist}); pick another name")


# Names the templates import: a plugin class must not shadow them (``reading`` -> ``ReadingPlugin``).
IMPORTED_NAMES = {"Annotated", "Any", "ClassVar", "Group", "Interval", "NetworkRequest", "PluginParams", "Reading",
                  "State", "Streams", "World", "ProtocolOutput", "masked_mean",
                  "StepOutput"}


def class_name_for(name: str) -> str:
    """``my_policy`` -> ``MyPolicy``."""
    class_name = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return class_name + "Plugin" if class_name in IMPORTED_NAMES else class_name


def package_files(kind: str, name: str) -> dict[str, str]:
    """Relative path -> text of every file of the package (nothing is written)."""
    template = kind_template(kind)
    fields = {
        "name": name, "dashed": name.replace("_", "-"), "package": f"valuesim_{name}",
        "class_name": class_name_for(name), "kind": kind, "singular": SINGULAR[kind],
    }
    fields["scenario_change"] = Template(template.scenario_change).substitute(fields)
    fields["scenario_check"] = Template(template.scenario_check).substitute(fields)
    fields["usage"] = Template(template.usage).substitute(fields)
    package = fields["package"]
    return {
        "pyproject.toml": Template(_template("pyproject.toml")).substitute(fields),
        "README.md": Template(_template("README.md")).substitute(fields),
        f"{package}/__init__.py": Template(_template("__init__.py")).substitute(fields),
        f"{package}/plugin.py": Template(template.plugin).substitute(fields),
        "tests/test_plugin.py": Template(_template("test_plugin.py")).substitute(fields),
    }


# ====================================================================== the templates (data files)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class KindTemplate:
    plugin: str  # plugin.py
    scenario_change: str  # how tests/test_plugin.py puts the plugin into SCENARIO
    scenario_check: str  # what it asserts about the run (indented into the test)
    usage: str  # the README's scenario excerpt


def _template(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.tmpl").read_text(encoding="utf-8")


def kind_template(kind: str) -> KindTemplate:
    """The four pieces of one kind's package, from ``templates/<singular>/``."""
    folder = SINGULAR[kind]
    return KindTemplate(plugin=_template(f"{folder}/plugin.py"),
                        scenario_change=_template(f"{folder}/scenario_change.py"),
                        scenario_check=_template(f"{folder}/scenario_check.py"),
                        usage=_template(f"{folder}/usage.yaml"))
