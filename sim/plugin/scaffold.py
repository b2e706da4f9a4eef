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

The templates are below, one per kind, as ``string.Template`` text
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
}
SINGULAR = {"policies": "policy", "dynamics": "dynamics", "metrics": "metric", "networks": "network",
            "protocols": "protocol"}
# Starts with a letter and ends with a letter or digit, so that the distribution name is valid too.
NAME_PATTERN = re.compile(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?")


def scaffold_plugin(kind: str, name: str, directory: Path | str = ".") -> Path:
    """Write the plugin package ``<directory>/valuesim-<name>/`` and return its path.

    ``kind``: ``policies``, ``dynamics``, ``metrics``, ``networks`` or ``protocols`` (or the
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
    raise ValuesimError(f"cannot make a plugin of kind {kind!r}{hint} (kinds: policy, dynamics, metric, network, protocol)")


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
                  "State", "Streams", "World", "ProtocolOutput", "masked_mean"}


def class_name_for(name: str) -> str:
    """``my_policy`` -> ``MyPolicy``."""
    class_name = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return class_name + "Plugin" if class_name in IMPORTED_NAMES else class_name


def package_files(kind: str, name: str) -> dict[str, str]:
    """Relative path -> text of every file of the package (nothing is written)."""
    template = TEMPLATES[kind]
    fields = {
        "name": name, "dashed": name.replace("_", "-"), "package": f"valuesim_{name}",
        "class_name": class_name_for(name), "kind": kind, "singular": SINGULAR[kind],
    }
    fields["scenario_change"] = Template(template.scenario_change).substitute(fields)
    fields["scenario_check"] = Template(template.scenario_check).substitute(fields)
    fields["usage"] = Template(template.usage).substitute(fields)
    package = fields["package"]
    return {
        "pyproject.toml": Template(PYPROJECT).substitute(fields),
        "README.md": Template(README).substitute(fields),
        f"{package}/__init__.py": Template(INIT).substitute(fields),
        f"{package}/plugin.py": Template(template.plugin).substitute(fields),
        "tests/test_plugin.py": Template(TEST).substitute(fields),
    }


# ====================================================================== templates shared by every kind

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "valuesim-$dashed"
version = "0.1.0"
description = "A valuesim $singular plugin: $name."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["valuesim"]

[project.optional-dependencies]
test = ["pytest>=7.4"]

# This is what makes valuesim find the plugin: in the group valuesim.$kind,
# the name scenarios use -> module:class.
[project.entry-points."valuesim.$kind"]
$name = "$package.plugin:$class_name"

[tool.setuptools.packages.find]
include = ["$package*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''\
"""valuesim-$dashed: the ``$name`` $singular plugin for valuesim (see ``plugin.py``)."""

from .plugin import $class_name

__all__ = ["$class_name"]
'''

TEST = '''\
"""The plugin keeps its contract (valuesim's own checker) and works in a scenario.

Run with ``pytest`` after ``pip install -e .`` (the scenario finds the plugin
through its entry point, as any scenario would).
"""

import sim
from sim.checks import check_$singular

from $package.plugin import $class_name

SCENARIO = {
    "name": "${name}_demo", "seed": 1, "steps": 20, "log_every": 5, "values": ["economic", "social"],
    "network": {"generator": "erdos_renyi", "params": {"mean_degree": 6}},
    "population": [{"name": "people", "count": 200, "confidence": 0.3, "rate": 0.3}],
    "dynamics": ["deffuant"],
    "metrics": ["mean_values"],
}
$scenario_change

def test_keeps_the_${singular}_contract():
    check_$singular($class_name)


def test_runs_in_a_scenario(tmp_path):
    run = sim.open_run(sim.run(sim.scenario_from_dict(SCENARIO), runs_dir=tmp_path))
    assert run.status == "complete"
$scenario_check'''

README = '''\
# valuesim-$dashed

A valuesim $singular plugin named `$name`: the class `$class_name` in
`$package/plugin.py`. It starts as a small working example of the
$singular contract (`sim/contracts.py` in valuesim); edit it into your own.

## Install

Into the environment where valuesim is installed:

```bash
pip install -e .
valuesim plugins list --kind $kind     # $name is listed
valuesim plugins show $name            # its documentation and parameters
```

## Check

```bash
pytest
```

`tests/test_plugin.py` runs valuesim's contract checker
(`sim.checks.check_$singular`) on the class and runs a small scenario that
uses it. Run it after every change.

## Use in a scenario

```yaml
$usage
```

## Layout

- `pyproject.toml`: the distribution, and the entry point valuesim finds the
  plugin by: `$name = "$package.plugin:$class_name"` in the group
  `valuesim.$kind`.
- `$package/plugin.py`: the plugin, with `Params` (its parameters, validated
  from the scenario) and the method that does the work.
- `tests/test_plugin.py`: the contract check and a scenario that uses it.

Renaming the plugin means changing the entry point's name (what scenarios
write) and reinstalling with `pip install -e .`.
'''


# ====================================================================== one template per kind


@dataclass(frozen=True)
class KindTemplate:
    plugin: str  # plugin.py
    scenario_change: str  # how tests/test_plugin.py puts the plugin into SCENARIO
    scenario_check: str  # what it asserts about the run (indented into the test)
    usage: str  # the README's scenario excerpt


POLICY = KindTemplate(
    plugin='''\
"""The ``$name`` policy: what this group's agents express to their partners.

A policy (``sim.contracts.Policy``) is called once per step for its group and
returns what each of the group's agents shows, in every world at once:
``express(state, world, group, rng) -> [B, group.size, K]`` in [0, 1].
The dynamics then move everyone's internal values given what was shown.
Work on whole tensors: a Python loop over agents is far too slow.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch

from sim.contracts import Group, Interval, PluginParams, State, Streams, World


class $class_name:
    """Agents express their own values shifted toward the middle of the scale.

    Each agent shows ``x + strength * (0.5 - x)`` for its current values ``x``:
    ``strength = 0`` is honest, ``strength = 1`` always shows 0.5 on every
    dimension. Its internal values still change as the dynamics say.
    """

    class Params(PluginParams):
        """Validated from the scenario: ``policy: {$name: {strength: 0.3}}``."""

        strength: Annotated[float, Interval(ge=0, le=1)] = 0.5
        """Share of the way from the agent's own values toward 0.5 that it expresses."""

    # False: partners see what ``express`` returns. Only a policy that shows
    # exactly the agent's current values says True (the dynamics then read
    # those values live, mid-step, and ``express`` is not called).
    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params: Params):
        self.params = params  # configuration only: state and random streams are passed in

    def express(self, state: State, world: World, group: Group, rng: Streams) -> torch.Tensor:
        """``[B, group.size, K]`` in [0, 1]: what each agent of ``group`` shows this step.

        ``state.values[:, group.rows]`` are the group's current values. Draw any
        randomness from ``rng`` under a purpose of your own, as a fixed-shape
        tensor (``rng.uniform("$name/jitter", (world.b, group.size, world.k))``),
        never from global state, so that runs repeat exactly and twin worlds agree.
        """
        own = state.values[:, group.rows]
        return own + self.params.strength * (0.5 - own)
''',
    scenario_change='''\
SCENARIO["population"].append({"name": "moderates", "count": 20, "policy": {"$name": {"strength": 0.5}}})
''',
    scenario_check='''\
    assert set(run.metrics()["group"]) >= {"people", "moderates"}
''',
    usage='''\
population:
  - name: citizens
    count: 1000
  - name: moderates
    count: 50
    policy: {$name: {strength: 0.5}}    # or just: policy: $name''',
)

DYNAMICS = KindTemplate(
    plugin='''\
"""The ``$name`` dynamics: how internal values change given what agents expressed.

A dynamics (``sim.contracts.Dynamics``) is a pure function over the batched
tensors: ``apply(values, expressed, state, world, rng)`` returns the new
values ``[B, N, K]`` in [0, 1] as a new tensor, without modifying its inputs.
The scenario lists dynamics in the order they apply within a step. Work on
whole tensors: a Python loop over agents is far too slow.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch

from sim.contracts import Interval, PluginParams, State, Streams, World


class $class_name:
    """Every active agent moves ``strength`` of the way toward the mean of what its world shows.

    A mean-field pull, ``x_i <- x_i + strength * (m - x_i)``, where ``m`` is the
    mean, over the world's active agents, of what each shows: its current
    values when its policy is honest, else what its policy expressed.
    """

    class Params(PluginParams):
        """Validated from the scenario: ``dynamics: [deffuant, {$name: {strength: 0.05}}]``."""

        strength: Annotated[float, Interval(ge=0, le=1)] = 0.05
        """Share of the distance to the world's mean covered in one step."""

    # The per-agent parameters it reads (confidence, rate, anchoring): none. A
    # scenario that sets one that no listed dynamics uses is told so.
    uses: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Params):
        self.params = params  # configuration only: state and random streams are passed in

    def apply(self, values: torch.Tensor, expressed: torch.Tensor, state: State, world: World,
              rng: Streams) -> torch.Tensor:
        """The new values ``[B, N, K]``; draw any randomness from ``rng`` (a purpose of your own), never global state."""
        # Honest agents show their live values (an earlier dynamics of this step may have moved them).
        shown = torch.where(world.honest[..., None], values, expressed)
        active = state.active[..., None]  # [B, N, 1]
        weight = active.to(values.dtype)
        mean = (shown * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp(min=1)
        moved = values + self.params.strength * (mean - values)
        return torch.where(active, moved, values).clamp(0.0, 1.0)
''',
    scenario_change='''\
SCENARIO["dynamics"] = ["deffuant", {"$name": {"strength": 0.1}}]
''',
    scenario_check='''\
    values = run.values()
    first, last = values[values.step == 0], values[values.step == values.step.max()]
    assert last["economic"].std() < 0.5 * first["economic"].std()  # everyone was pulled together
''',
    usage='''\
dynamics:
  - deffuant
  - $name: {strength: 0.05}''',
)

METRIC = KindTemplate(
    plugin='''\
"""The ``$name`` metric: an observer of the state, logged at ``log_every``.

A metric (``sim.contracts.Metric``) reads the state and returns readings:
``observe(state, world, carry, rng) -> (list[Reading], carry)``. A
``Reading`` is shaped ``[B, S, D]``: worlds, scopes (the groups in scenario
order, then ``"all"``), and value dimensions (or one unnamed column). ``carry``
is the metric's memory between observations (``None`` at first). Work on whole
tensors: a Python loop over agents is far too slow.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch

from sim.contracts import Interval, PluginParams, Reading, State, Streams, World


class $class_name:
    """``$name`` [B, S, 1]: mean distance of the agents' values from a centre point, per scope.

    An agent's distance is the Euclidean distance of its value vector from
    ``(centre, ..., centre)`` divided by sqrt(K), so it lies in [0, 1]. Scopes
    are the groups in scenario order, then ``"all"``. Only active agents count;
    a scope with none is NaN.
    """

    class Params(PluginParams):
        """Validated from the scenario: ``metrics: [{$name: {centre: 0.5}}]``."""

        centre: Annotated[float, Interval(ge=0, le=1)] = 0.5
        """The point, on every value dimension, that distances are measured from."""

    def __init__(self, params: Params):
        self.params = params  # configuration only: state and random streams are passed in

    def observe(self, state: State, world: World, carry: Any, rng: Streams):
        """``([Reading], carry)``; sample with ``rng`` only, so observing never changes a run."""
        distance = torch.linalg.vector_norm(state.values.double() - self.params.centre, dim=2) / math.sqrt(world.k)
        weight = state.active.double()  # [B, N]
        groups = world.group_index.to(distance.device)
        shape = (world.b, len(world.groups))
        total = torch.zeros(shape, dtype=torch.float64, device=distance.device).index_add_(1, groups,
                                                                                            distance * weight)
        count = torch.zeros(shape, dtype=torch.float64, device=distance.device).index_add_(1, groups, weight)
        total = torch.cat([total, (distance * weight).sum(1, keepdim=True)], 1)  # then the "all" scope
        count = torch.cat([count, weight.sum(1, keepdim=True)], 1)
        mean = torch.where(count > 0, total / count.clamp(min=1), torch.nan)
        scopes = tuple(group.name for group in world.groups) + ("all",)
        return [Reading("$name", mean[..., None].cpu(), scopes)], carry
''',
    scenario_change='''\
SCENARIO["metrics"] = ["mean_values", {"$name": {"centre": 0.5}}]
''',
    scenario_check='''\
    readings = run.metrics().query("metric == '$name'")
    assert len(readings) and readings["value"].between(0, 1).all()
''',
    usage='''\
metrics: [mean_values, drift, $name]    # or with parameters: {$name: {centre: 0.5}}''',
)

NETWORK = KindTemplate(
    plugin='''\
"""The ``$name`` network generator: who can influence whom.

A network generator (``sim.contracts.NetworkGenerator``) is called once per
run: ``build(request)`` returns an ``[E, 2]`` int64 array of edges between
agents ``0..request.n - 1`` (or a networkx graph on those nodes). valuesim
drops direction, self-loops and duplicates. ``request.groups`` tells which
rows belong to which group, if the graph should depend on them.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from sim.contracts import Interval, NetworkRequest, PluginParams


class $class_name:
    """Each agent links to ``links`` others chosen uniformly at random; edges are undirected.

    A random graph in which every agent has at least ``links`` neighbours.
    Every draw comes from ``numpy.random.default_rng(request.seed)``: the same
    scenario seed always gives the same network.
    """

    class Params(PluginParams):
        """Validated from the scenario: ``network: {generator: $name, params: {links: 3}}``."""

        links: Annotated[int, Interval(ge=1)] = 3
        """Partners each agent picks (its degree ends up a little under 2 x links on average)."""

    def __init__(self, params: Params):
        self.params = params  # configuration only

    def build(self, request: NetworkRequest) -> np.ndarray:
        """``[E, 2]`` int64 edges on agents ``0..request.n - 1``."""
        n = request.n
        if n < 2:
            return np.empty((0, 2), dtype=np.int64)
        rng = np.random.default_rng(request.seed)  # never global random state
        source = np.repeat(np.arange(n, dtype=np.int64), self.params.links)
        # A target among the n - 1 other agents: draw from 0..n-2 and step over the source.
        target = rng.integers(0, n - 1, size=source.size, dtype=np.int64)
        target += target >= source
        return np.stack([source, target], axis=1)
''',
    scenario_change='''\
SCENARIO["network"] = {"generator": "$name", "params": {"links": 3}}
''',
    scenario_check='''\
    assert run.scenario["network"] == {"generator": "$name", "params": {"links": 3}}
''',
    usage='''\
network:
  generator: $name
  params: {links: 3}''',
)

PROTOCOL = KindTemplate(
    plugin='''\
"""The ``$name`` protocol: who meets whom, when, and what came of it.

A protocol (``sim.contracts.Protocol``) acts first in every step, before the
groups express themselves and the dynamics run. It keeps its own batched state
(tensors with a leading world axis B, saved in checkpoints), may move values by
its own rule, may ask groups for actions it declares as Gymnasium spaces, and
records outcomes there that metrics can read (``protocol_outcome``). It never
addresses or moves an absent agent (``state.active`` False).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch

from sim.contracts import Interval, PluginParams, ProtocolOutput, State, Streams, World
from sim.core.ops import masked_mean


class $class_name:
    """Every ``every`` steps the present agents of a group meet, and each moves toward their mean.

    At a meeting every present member moves ``strength`` of the way toward the
    present members' mean values. The outcome ``meetings`` counts them per world.
    """

    class Params(PluginParams):
        """Validated from the scenario: ``protocols: [{$name: {group: people, every: 5}}]``."""

        group: str | None = None
        """The group that meets; None: everyone."""
        every: Annotated[int, Interval(ge=1)] = 5
        """Meet every this many steps (of each world)."""
        strength: Annotated[float, Interval(ge=0, le=1)] = 0.1
        """Share of the way toward the meeting's mean that each member moves."""

    uses: ClassVar[tuple[str, ...]] = ()  # per-agent parameters it reads (confidence, rate, anchoring)

    def __init__(self, params: Params):
        self.params = params  # configuration only: state and random streams are passed in

    def _rows(self, world: World) -> slice:
        if self.params.group is None:
            return slice(0, world.n)
        names = [g.name for g in world.groups]
        if self.params.group not in names:  # shown as a scenario error when the world is built
            raise ValueError(f"group must name a group ({', '.join(names)}), got {self.params.group!r}")
        return world.group(self.params.group).rows

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        """The protocol's state at step 0: one counter per world."""
        self._rows(world)
        return {"meetings": torch.zeros(world.b, dtype=torch.int64, device=world.device)}

    def action_spaces(self, world: World) -> dict:
        """What it may ask groups to decide: nothing (e.g. ``{("people", "attend"): Discrete(2)}``)."""
        return {}

    def step(self, values, state: State, world: World, carry, rng: Streams, ask) -> ProtocolOutput:
        """Meet where it is time to, in every world at once."""
        rows = self._rows(world)
        due = (state.world_step + 1) % self.params.every == 0  # [B]
        members = values[:, rows]
        present = state.active[:, rows]
        centre = masked_mean(members, present).nan_to_num(0.5)[:, None]  # [B, 1, K]
        moving = (present & due[:, None])[..., None]
        moved = torch.where(moving, members + self.params.strength * (centre - members), members)
        new = values.clone()
        new[:, rows] = moved
        return ProtocolOutput(values=new, carry={"meetings": carry["meetings"] + due.long()}, events=[])
''',
    scenario_change='''\
SCENARIO["protocols"] = [{"$name": {"every": 2}}]
SCENARIO["metrics"] = ["mean_values", {"protocol_outcome": {"protocol": "$name", "outcome": "meetings"}}]
''',
    scenario_check='''\
    meetings = run.metrics().query("metric == '$name.meetings'")
    assert meetings["value"].max() == 10  # 20 steps, a meeting every 2
''',
    usage='''\
protocols:
  - $name: {group: people, every: 5, strength: 0.1}
metrics: [mean_values, {protocol_outcome: {protocol: $name, outcome: meetings}}]''',
)

TEMPLATES = {"policies": POLICY, "dynamics": DYNAMICS, "metrics": METRIC, "networks": NETWORK, "protocols": PROTOCOL}
