"""Checks that a plugin keeps its contract (``sim.core.contracts``), with errors that say how to fix it.

:func:`check_plugin` is what the registry runs right after importing a plugin:
static checks only, so a broken plugin is reported when it is loaded. Plugin
authors call :func:`check_policy`, :func:`check_dynamics`, :func:`check_metric`,
:func:`check_network`, :func:`check_protocol` and :func:`check_alignment` in their tests: the same checks, then the plugin run
on :func:`tiny_world`. A failure is a :class:`~sim.errors.PluginError` reading
``"<kind> plugin '<name>' from <origin>: <what is wrong and how to fix it>"``
(the per-kind checks name the plugin by its ``module:qualname``).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from ..core.contracts import NetworkRequest, PolicyOutput, Reading
from ..errors import PluginError
from .kinds import KINDS, unknown_name_message
from ..core.network import edges_to_network
from ..core.ops import unit_range_problem
from ..core.rng import Streams
from ..core.state import AGENT_PARAMETERS, AgentParams, Group, State, World
from ..core.valuespace import ValueSpace

# kind -> (the method that does the work, its parameters after self)
CONTRACTS = {
    "dynamics": ("apply", ("values", "expressed", "state", "world", "rng")),
    "metrics": ("observe", ("state", "world", "carry", "rng")),
    "networks": ("build", ("request",)),
    "policies": ("express", ("state", "world", "group", "rng")),
    "protocols": ("step", ("values", "state", "world", "carry", "rng", "ask")),
    "alignment": ("update", ("values", "state", "world", "carry", "rng")),
}
# further methods a kind must have (beyond its working method)
REQUIRED_METHODS = {"protocols": {"start": ("world", "rng"), "action_spaces": ("world",)},
                    "alignment": {"start": ("world", "rng")}}
OPTIONAL_METHODS = {
    "policies": {"prepare": ("world", "group"), "act": ("state", "world", "group", "rng", "action", "space")},
    "metrics": {"reset": ("carry", "worlds"), "prepare": ("world",)},
    "dynamics": {"prepare": ("world",)},
}
PER_AGENT_PARAMETERS = tuple(AGENT_PARAMETERS)

B, N, K = 2, 12, 3
GROUPS = (Group("first", "human", 0, 6), Group("second", "human", 6, 12))
SEED = 7
WORLD_TEXT = f"the tiny world of sim.checks (B={B}, N={N} in 2 groups, K={K}, a ring)"


class _Failure(Exception):
    """What is wrong; :func:`_reporting` puts the plugin's kind, name and origin in front."""


@contextmanager
def _reporting(kind: str, name: str, origin: str):
    try:
        yield
    except _Failure as failure:
        where = f" from {origin}" if origin else ""
        raise PluginError(f"{kind} plugin {name!r}{where}: {failure}") from None


def _identity(obj: Any) -> tuple[str, str]:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}", ""


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


# ---------------------------------------------------------------- static checks


def check_plugin(kind: str, obj: Any, *, name: str, origin: str) -> None:
    """Check ``obj``, just imported as the ``kind`` plugin ``name``, against its contract, running none of it.

    Every kind: a documented class; ``Params`` a strict pydantic model whose
    defaults validate; ``obj(params)`` binds. Kinds with a written contract:
    the working method (and a policy's optional ``prepare``) takes the
    contract's parameters; dynamics declare ``uses``; ``expresses_own_values`` is a bool.
    """
    if kind not in KINDS:
        raise PluginError(unknown_name_message("plugin kind", kind, list(KINDS), "kinds"))
    with _reporting(kind, name, origin):
        _check_static(kind, obj)


def _check_static(kind: str, obj: Any) -> None:
    if not inspect.isclass(obj):
        raise _Failure(f"the entry point gives a {type(obj).__name__}, not a class; "
                       "point it at the plugin class (module:ClassName)")
    if not (obj.__doc__ or "").strip():
        raise _Failure("add a class docstring: it is what `valuesim plugins show` prints")
    _check_params_class(obj)
    _check_init(obj)
    if kind in CONTRACTS:
        _check_method(obj, *CONTRACTS[kind], required=True)
    for method, names in REQUIRED_METHODS.get(kind, {}).items():
        _check_method(obj, method, names, required=True)
    for method, names in OPTIONAL_METHODS.get(kind, {}).items():
        _check_method(obj, method, names, required=False)
    if kind in ("dynamics", "protocols"):
        _check_uses(obj)
    if kind == "policies" and hasattr(obj, "expresses_own_values"):
        flag = obj.expresses_own_values
        if not isinstance(flag, bool):
            raise _Failure(f"expresses_own_values must be True or False, got {flag!r}")


def _check_params_class(cls: type) -> None:
    """``Params`` is a pydantic model that refuses unknown keys, and ``Params()`` fails only for want of values."""
    params = getattr(cls, "Params", None)
    if params is None:
        raise _Failure("it has no Params; add `Params = NoParams` (from sim.contracts) "
                       "or a nested `class Params(PluginParams)`")
    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        shown = f"the class {params.__qualname__}" if inspect.isclass(params) else f"a {type(params).__name__}"
        raise _Failure(f"Params is {shown}, not a pydantic model; make it a subclass of sim.contracts.PluginParams")
    if params.model_config.get("extra") != "forbid":
        raise _Failure("Params accepts unknown keys, so a misspelt parameter would pass unnoticed; "
                       "subclass sim.contracts.PluginParams (or set extra='forbid' in its model_config)")
    try:
        params()
    except ValidationError as error:
        # Required fields, and model validators that ask for a choice, are fine; a default that fails is not.
        for problem in error.errors():
            if problem["loc"] and problem["type"] != "missing":
                field = ".".join(map(str, problem["loc"]))
                raise _Failure(f"the default of Params.{field} does not validate ({problem['msg']}); fix the default")
    except Exception as error:
        raise _Failure(f"Params() raised {_one_line(error)}") from None


def _check_init(cls: type) -> None:
    """``cls(params)`` binds: ``__init__`` takes the validated parameters as its one positional argument."""
    try:
        signature = inspect.signature(cls)
        signature.bind(object())
    except ValueError:
        return  # a signature Python cannot read (a compiled class): nothing to check
    except TypeError:
        raise _Failure(f"__init__ takes ({_parameter_text(signature.parameters.values())}) but the contract is "
                       "__init__(self, params): keep the validated Params as self.params") from None


def _check_method(cls: type, method: str, names: tuple[str, ...], required: bool) -> None:
    """The method exists and its positional parameters (after self) are exactly the contract's names."""
    contract = f"{method}({', '.join(names)})"
    function = getattr(cls, method, None)
    if not callable(function):
        if required or function is not None:
            raise _Failure(f"it has no {method}() method; the contract is {contract}")
        return
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return
    if not isinstance(inspect.getattr_static(cls, method), (staticmethod, classmethod)):
        parameters = parameters[1:]  # self
    if not _matches(parameters, names):
        raise _Failure(f"{method}() takes ({_parameter_text(parameters)}) but the contract is {contract}")


def _matches(parameters: list[inspect.Parameter], names: tuple[str, ...]) -> bool:
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    extra = [p for p in parameters[len(names):] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return tuple(p.name for p in positional[:len(names)]) == names and all(p.default is not p.empty for p in extra)


def _parameter_text(parameters) -> str:
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return ", ".join(stars.get(p.kind, "") + p.name for p in parameters)


def _check_uses(cls: type) -> None:
    """``uses`` is a tuple naming per-agent parameters (so a scenario setting an unused one can be told)."""
    if not hasattr(cls, "uses"):
        raise _Failure("it has no `uses`; add a class attribute naming the per-agent parameters apply() reads, "
                       "e.g. uses = ('confidence', 'rate'), or uses = () for none")
    uses = cls.uses
    if not (isinstance(uses, tuple) and all(isinstance(u, str) for u in uses)):
        raise _Failure(f"uses must be a tuple of names, got {uses!r}; e.g. uses = ('confidence', 'rate')")
    for used in uses:
        if used not in PER_AGENT_PARAMETERS:
            close = difflib.get_close_matches(used, PER_AGENT_PARAMETERS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Failure(f"uses names {used!r}{hint}, which is not a per-agent parameter; "
                           f"choose among {', '.join(PER_AGENT_PARAMETERS)}")


# ---------------------------------------------------------------- the tiny world


def tiny_world() -> tuple[World, State]:
    """The world plugins are run on: B=2, N=12 in two groups of 6, K=3, a ring, float32 on the CPU.

    Values have moved from the initial ones; the first group is honest; the
    rate is per world ([B, N]), the other per-agent parameters broadcast ([1, N]).
    One protocol has run: ``state.protocols["checked"]["count"]`` is ``[3, 5]``.
    """
    generator = torch.Generator().manual_seed(SEED)
    initial = torch.rand((B, N, K), generator=generator)
    ring = np.stack([np.arange(N), (np.arange(N) + 1) % N], axis=1)
    params = AgentParams(confidence=torch.linspace(0.3, 0.7, N)[None], rate=torch.tensor([[0.2], [0.4]]).expand(B, N),
                         anchoring=torch.full((1, N), 0.2), zealot=torch.zeros((1, N), dtype=torch.bool))
    world = World(space=ValueSpace("check", tuple(f"d{i}" for i in range(K))), groups=GROUPS,
                  network=edges_to_network(N, ring), params=params, initial=initial,
                  group_index=torch.repeat_interleave(torch.arange(2), 6), honest=torch.arange(N) < 6)
    state = State(values=torch.rand((B, N, K), generator=generator), active=torch.ones((B, N), dtype=torch.bool),
                  protocols={"checked": {"count": torch.tensor([3, 5])}})
    return world, state


def _streams() -> Streams:
    """The tiny world's random streams (worlds 0 and 1) at step 1."""
    return Streams.of(SEED, B).at(1)


def _instantiate(kind: str, cls: type, params: dict | None, checker: str) -> Any:
    """The static checks, then ``cls(cls.Params(**params))``."""
    _check_static(kind, cls)
    try:
        validated = cls.Params.model_validate({} if params is None else params)
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(map(str, problem["loc"]))
        raise _Failure(f"params {params or {}!r} do not validate ({field + ': ' if field else ''}{problem['msg']}); "
                       f"pass valid ones: {checker}(cls, params={{...}})") from None
    try:
        return cls(validated)
    except Exception as error:
        raise _Failure(f"{cls.__name__}(params) raised {_one_line(error)}") from None


def _inputs(world: World, state: State, **first: torch.Tensor) -> dict[str, torch.Tensor]:
    named = dict(first, **{"state.values": state.values, "state.active": state.active,
                           "world.initial": world.initial, "world.network.col": world.network.col})
    named.update({f"world.params.{f}": getattr(world.params, f) for f in AGENT_PARAMETERS})
    return named


def _call(label: str, run: Callable[[], Any], inputs: dict[str, torch.Tensor]) -> Any:
    """Run the plugin: raising is its failure, and so is changing any of ``inputs``."""
    before = {name: tensor.clone() for name, tensor in inputs.items()}
    try:
        out = run()
    except _Failure:  # a check made inside the run (an action asked of the checker)
        raise
    except Exception as error:
        raise _Failure(f"{label} raised {_one_line(error)} on {WORLD_TEXT}") from None
    for name, copy in before.items():
        if not torch.equal(inputs[name], copy):
            raise _Failure(f"{label} modified its input `{name}` in place; "
                           "work on a copy (e.g. .clone()) and return it")
    return out


@contextmanager
def _global_seed(seed: int):
    """Put torch's, numpy's and Python's global generators in a state made from ``seed``, then put them back.

    The checker varies global random state on purpose, to catch a plugin that draws from it instead of
    the random streams it is given; the caller's state is restored on the way out.
    """
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.set_rng_state(torch.Generator().manual_seed(seed).get_state())
    np.random.set_state(np.random.RandomState(seed).get_state())
    random.setstate(random.Random(seed).getstate())
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


def _run(label: str, run: Callable[[], Any], inputs: dict, check: Callable[[Any], list[torch.Tensor]]) -> Any:
    """Run twice from the same seed under different global random states; return the first result.

    ``check`` validates a result and returns its tensors, which must be equal in both runs.
    """
    results, tensors = [], []
    for global_seed in (1, 2):
        with _global_seed(global_seed):
            results.append(_call(label, run, inputs))
        tensors.append(check(results[-1]))
    first, second = tensors
    if len(first) != len(second) or not all(
            a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True) for a, b in zip(first, second)):
        raise _Failure(f"{label} gave different results from the same seed; draw every random number from the "
                       "random streams (rng) or seed it is given, never from torch's, numpy's or Python's global "
                       "state")
    return results[0]


def _unit_tensor(label: str, out: Any, shape: tuple[int, ...], contract: str, like: torch.Tensor) -> torch.Tensor:
    """``out`` is a finite tensor of ``shape`` in [0, 1], with the dtype and device of ``like``."""
    if not isinstance(out, torch.Tensor):
        raise _Failure(f"{label} returned a {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != shape:
        raise _Failure(f"{label} returned shape {list(out.shape)} but the contract is {contract} = {list(shape)}")
    if out.dtype != like.dtype:
        raise _Failure(f"{label} returned {out.dtype}; return the dtype of the values ({like.dtype})")
    if out.device != like.device:
        raise _Failure(f"{label} returned a tensor on {out.device}; return it on the values' device ({like.device})")
    problem = unit_range_problem(out)  # the engine words it the same way at every step of a run
    if problem is not None:
        raise _Failure(f"{label} returned {problem}")
    return out


# An agent that is absent from one world: its values are changed wildly in a twin state, and nothing
# any other agent gets may change (it is never matched, never heard, not counted).
ABSENT = (1, 3)  # (world, agent)


def _absent_twins(state: State) -> tuple[State, State]:
    """Two copies of ``state`` with agent ``ABSENT`` inactive; in the second its values are mirrored."""
    active = state.active.clone()
    active[ABSENT] = False
    first = State(values=state.values.clone(), active=active)
    mirrored = state.values.clone()
    mirrored[ABSENT] = 1 - mirrored[ABSENT]
    return first, State(values=mirrored, active=active.clone())


def _expressed(out: Any) -> torch.Tensor:
    return out.expressed if isinstance(out, PolicyOutput) else out


def _check_absent_unheard(label: str, state: State, run: Callable[[State], torch.Tensor],
                          rows: slice = slice(None)) -> None:
    """What ``run`` returns for every agent but the absent one does not depend on the absent agent's values."""
    first, second = _absent_twins(state)
    a, b = run(first), run(second)
    keep = torch.ones(a.shape[:2], dtype=torch.bool)
    world, agent = ABSENT
    start = rows.start or 0
    if start <= agent < start + a.shape[1]:
        keep[world, agent - start] = False
    if not torch.equal(a[keep], b[keep]):
        raise _Failure(f"{label} lets an absent agent (state.active False: agent {agent} of world {world}) "
                       "influence the others; leave inactive agents out of partners, neighbourhoods and "
                       "audiences (their values are not to be read)")


# ---------------------------------------------------------------- per-kind checks


def check_dynamics(cls: type, params: dict | None = None) -> None:
    """Static checks, then ``apply`` on :func:`tiny_world`: it returns a float32 tensor [B, N, K] on the values'
    device, finite and in [0, 1], changes none of its inputs, and repeats from the same random streams.
    """
    with _reporting("dynamics", *_identity(cls)):
        plugin = _instantiate("dynamics", cls, params, "check_dynamics")
        world, state = tiny_world()
        # The second group is not honest: it shows a policy's vector.
        expressed = torch.where(world.honest[..., None], state.values, 1 - state.values)
        _run("apply()", lambda: plugin.apply(state.values, expressed, state, world, _streams()),
             _inputs(world, state, values=state.values, expressed=expressed),
             lambda out: [_unit_tensor("apply()", out, (B, N, K), "[B, N, K]", state.values)])
        _check_absent_unheard("apply()", state, lambda st: plugin.apply(
            st.values, torch.where(world.honest[..., None], st.values, 1 - st.values), st, world, _streams()))


def check_policy(cls: type, params: dict | None = None) -> None:
    """Static checks, then ``prepare`` (if any) and ``express`` for each group of :func:`tiny_world`.

    express returns a float32 tensor [B, group.size, K] on the values' device, finite and in [0, 1], changes
    none of its inputs, repeats from the same random streams, and is the group's own values if it says so.
    """
    with _reporting("policies", *_identity(cls)):
        plugin = _instantiate("policies", cls, params, "check_policy")
        world, state = tiny_world()
        for group in world.groups:
            if hasattr(plugin, "prepare"):
                _call("prepare()", lambda: plugin.prepare(world, group), {})

            def check(out, group=group):
                if isinstance(out, PolicyOutput):  # a tensor plus events for the log
                    if not all(isinstance(e, dict) for e in out.events):
                        raise _Failure("express() returned PolicyOutput.events that are not all dicts")
                    out = out.expressed
                _unit_tensor("express()", out, (B, group.size, K), "[B, group.size, K]", state.values)
                if getattr(cls, "expresses_own_values", False) and not torch.equal(out, state.values[:, group.rows]):
                    raise _Failure("expresses_own_values is True but express() does not return the group's "
                                   "current values state.values[:, group.rows]; set it to False")
                return [out]

            _run("express()", lambda group=group: plugin.express(state, world, group, _streams()),
                 _inputs(world, state), check)
            _check_absent_unheard("express()", state, lambda st, group=group: _expressed(
                plugin.express(st, world, group, _streams())), rows=group.rows)


def check_metric(cls: type, params: dict | None = None) -> None:
    """Static checks, then two observations of :func:`tiny_world`, the second given the first's carry.

    observe returns ``(readings, carry)``, each reading a :class:`~sim.contracts.Reading` with a name, tuples of
    scopes and dimensions and a float tensor [B, len(scopes), len(dimensions)]; no input changes; it repeats;
    and it does not count an inactive agent (see :func:`_check_absent_agent_not_counted`).
    """
    with _reporting("metrics", *_identity(cls)):
        plugin = _instantiate("metrics", cls, params, "check_metric")
        world, state = tiny_world()
        carry = None
        for step in (0, 1):
            state.step = step

            def run(carry=carry):  # each call gets its own copy, so a carry updated in place still repeats
                return plugin.observe(state, world, copy.deepcopy(carry), _streams())

            _, carry = _run("observe()", run, _inputs(world, state), _reading_values)
        _check_absent_agent_not_counted(plugin)


ABSENT_AGENT = (0, 2)  # (world, agent) made inactive by the metric check


def _check_absent_agent_not_counted(plugin: Any) -> None:
    """With agent 2 inactive in world 0, moving its values to the far corner changes no reading of any world."""
    world, state = tiny_world()
    absent_world, agent = ABSENT_AGENT
    state.active[absent_world, agent] = False
    moved = state.values.clone()
    moved[absent_world, agent] = 1 - moved[absent_world, agent].round()
    readings = []
    for values in (state.values, moved):
        observed = copy.copy(state)  # the same state (active mask, protocols, ...) but for the values
        observed.values = values
        run = lambda observed=observed: plugin.observe(observed, world, None, _streams())  # noqa: E731
        readings.append(_run("observe()", run, _inputs(world, observed), _reading_values)[0])
    for before, after in zip(*readings):
        for w in range(B):
            if not torch.allclose(before.value[w], after.value[w], rtol=0, atol=0, equal_nan=True):
                raise _Failure(
                    f"reading {before.metric!r} of world {w} changed when only the values of agent {agent}, "
                    f"inactive in world {absent_world} (state.active[{absent_world}, {agent}] is False), changed; "
                    "an inactive agent is not in the world: leave it out of every scope "
                    "(weight by state.active and count only active agents)")


def _reading_values(result: Any) -> list[torch.Tensor]:
    """The values of the readings of ``observe``'s ``(readings, carry)``, each checked against the contract."""
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], (list, tuple))):
        raise _Failure(f"observe() returned a {type(result).__name__}; return (readings, carry): a list of "
                       "sim.contracts.Reading and the metric's memory (None if it keeps none)")
    for reading in result[0]:
        if not isinstance(reading, Reading):
            raise _Failure(f"observe() returned a {type(reading).__name__} among its readings; "
                           "return sim.contracts.Reading(metric, value, scopes, dimensions)")
        name, value, labels = reading.metric, reading.value, (reading.scopes, reading.dimensions)
        if not (isinstance(name, str) and name and all(isinstance(x, tuple) and x for x in labels)):
            raise _Failure(f"reading {name!r}: give a non-empty metric name and non-empty tuples of scopes and "
                           f"dimensions, got {labels[0]!r} and {labels[1]!r}")
        shape = [B, len(reading.scopes), len(reading.dimensions)]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise _Failure(f"reading {name!r}: value is {got}; make it a floating-point torch.Tensor "
                           "(NaN where undefined)")
        if list(value.shape) != shape:
            raise _Failure(f"reading {name!r}: value has shape {list(value.shape)} but its scopes and dimensions "
                           f"call for [B, len(scopes), len(dimensions)] = {shape}")
    return [reading.value for reading in result[0]]


def check_network(cls: type, params: dict | None = None) -> None:
    """Static checks, then ``build`` for the population of :func:`tiny_world`.

    build returns a networkx graph on nodes 0..N-1 or an integer numpy array [E, 2] of ids in [0, N), the same
    edges from the same ``request.seed``. A relative path in ``params`` is taken from the current directory.
    """
    with _reporting("networks", *_identity(cls)):
        plugin = _instantiate("networks", cls, params, "check_network")
        request = NetworkRequest(n=N, groups=GROUPS, seed=SEED, base_dir=Path.cwd())
        _run("build()", lambda: plugin.build(request), {}, _edges)


def _edges(built: Any) -> list[torch.Tensor]:
    """The CSR arrays of what ``build`` returned, which must be a graph or an edge array on N nodes."""
    is_graph = all(hasattr(built, a) for a in ("nodes", "edges", "number_of_nodes"))
    if not (is_graph or isinstance(built, np.ndarray)):
        raise _Failure(f"build() returned a {type(built).__name__}; return a networkx graph on nodes 0..N-1 "
                       "or an int64 numpy array [E, 2]")
    try:
        network = edges_to_network(N, built)
    except ValueError as error:
        what = "graph" if is_graph else "edge array"
        raise _Failure(f"build() returned an unusable {what} for N={N}: {' '.join(str(error).split())}") from None
    return [network.rowptr, network.col]


def check_protocol(cls: type, params: dict | None = None) -> None:
    """Static checks, then ``start``, ``action_spaces`` and ``step`` on :func:`tiny_world`.

    start returns a dict of tensors with a leading B; action_spaces maps (group, action) to Gymnasium spaces;
    step returns a :class:`~sim.contracts.ProtocolOutput` (new values [B, N, K] in [0, 1] or None, a carry like
    start's, events as dicts), changes none of its inputs, repeats from the same random streams, works whether
    the groups' policies answer its actions or not, and neither moves nor hears an absent agent; fields it
    lists in ``per_world`` held as [B] tensors of their own values change nothing.
    """
    from gymnasium.spaces import Space

    with _reporting("protocols", *_identity(cls)):
        plugin = _instantiate("protocols", cls, params, "check_protocol")
        world, state = tiny_world()
        carry = _call("start()", lambda: plugin.start(world, _streams().at(-1)), _inputs(world, state))
        _batched("start()", carry)
        spaces = _call("action_spaces()", lambda: plugin.action_spaces(world), {})
        if not isinstance(spaces, dict) or not all(
                isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)
                and isinstance(space, Space) for key, space in spaces.items()):
            raise _Failure("action_spaces() must return {(group name, action name): gymnasium.spaces.Space}")
        state.protocols = {"checked": carry}
        for answered in (False, True):  # the policies give no action, then a sample of each space
            def step(st: State, answered=answered) -> Any:
                return plugin.step(st.values, st, world, copy.deepcopy(carry), _streams(),
                                   _asker(world, st, spaces, answered))

            _run("step()", lambda: step(state), _inputs(world, state),
                 lambda out: _step_output("step()", out, state))
            _check_absent_unheard("step()", state, lambda st: _moved_or_same(step(st), st))
            first, _ = _absent_twins(state)
            after = _moved_or_same(step(first), first)
            if not torch.equal(after[ABSENT], first.values[ABSENT]):
                raise _Failure("step() moved an absent agent (state.active False); leave inactive agents' "
                               "values as they are")
        _check_per_world(plugin, world, state, carry, spaces)


def _check_per_world(plugin: Any, world: World, state: State, carry: dict, spaces: dict) -> None:
    """The ``per_world`` fields held as [B] tensors of their own values must change nothing (sim.core.perworld):
    a plugin that reads one as a plain float fails here, not in the first sweep over it."""
    from ..core.perworld import varied

    names = tuple(getattr(type(plugin), "per_world", ()))
    if not names:
        return
    fields = type(plugin).Params.model_fields
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise _Failure(f"per_world names {unknown[0]!r}, which is not a field of Params "
                       f"(fields: {', '.join(fields)})")
    keys = {}
    for name in names:
        value = getattr(plugin.params, name)
        if isinstance(value, dict):
            keys.update({f"{name}.{k}": v for k, v in value.items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys[name] = value
    try:
        twin = varied(plugin, "per_world", [dict(keys)] * world.b, world)
    except ValueError as error:
        raise _Failure(f"per_world: {error}") from None
    same = _call("start() with per_world tensors", lambda: twin.start(world, _streams().at(-1)), {})
    if set(same) != set(carry) or not all(_identical(same[k], carry[k]) for k in carry):
        raise _Failure("start() gave another carry when its per_world fields were [B] tensors of the same "
                       "values; read them through sim.contracts.per_world(value, world)")
    plain = plugin.step(state.values, state, world, copy.deepcopy(carry), _streams(), _asker(world, state, spaces,
                                                                                              False))
    out = _call("step() with per_world tensors", lambda: twin.step(
        state.values, state, world, copy.deepcopy(carry), _streams(), _asker(world, state, spaces, False)), {})
    if not _identical(_moved_or_same(out, state), _moved_or_same(plain, state)):
        raise _Failure("step() moved values otherwise when its per_world fields were [B] tensors of the same "
                       "values; read them through sim.contracts.per_world(value, world)")


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, NaN where the other has NaN (a carry's 'not yet' entries)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _moved_or_same(out: Any, state: State) -> torch.Tensor:
    return out.values if out.values is not None else state.values


def _asker(world: World, state: State, spaces: dict, answered: bool):
    """The ``ask`` a protocol gets: a group's expression (its current values), or a seeded sample of a space."""
    def ask(group: str, action: str):
        rows = world.group(group).rows
        if action == "express":
            return state.values[:, rows]
        if (group, action) not in spaces:
            raise _Failure(f"step() asked for action {action!r} of group {group!r}, which action_spaces() "
                           "does not declare")
        if not answered:
            return None
        space = spaces[(group, action)]
        space.seed(SEED)
        samples = [[space.sample() for _ in range(rows.stop - rows.start)] for _ in range(world.b)]
        return torch.as_tensor(np.array(samples))
    return ask


def _batched(label: str, carry: Any) -> None:
    if not isinstance(carry, dict) or not all(isinstance(k, str) and torch.is_tensor(v) and v.dim() >= 1
                                              and v.shape[0] == B for k, v in carry.items()):
        raise _Failure(f"{label} must return a dict of tensors with a leading world axis [B, ...] (B={B})")


def _step_output(label: str, out: Any, state: State) -> list[torch.Tensor]:
    from ..core.contracts import StepOutput

    kind = "ProtocolOutput" if label == "step()" else "StepOutput"
    if not isinstance(out, StepOutput):
        raise _Failure(f"{label} returned a {type(out).__name__}; return sim.contracts.{kind}(values, carry, events)")
    _batched(f"{label} (its carry)", out.carry)
    if not all(isinstance(e, dict) for e in out.events):
        raise _Failure(f"{label} returned {kind}.events that are not all dicts")
    tensors = list(out.carry.values())
    if out.values is not None:
        tensors.append(_unit_tensor(label, out.values, (B, N, K), "[B, N, K]", state.values))
    return tensors


def check_alignment(cls: type, params: dict | None = None) -> None:
    """Static checks, then ``start`` and ``update`` on :func:`tiny_world` at a few steps.

    start returns a dict of tensors with a leading B; update returns a :class:`~sim.contracts.StepOutput` (new
    values [B, N, K] in [0, 1] or None, a carry like start's, events as dicts), changes none of its inputs, repeats
    from the same random streams, and neither moves an absent agent nor lets one count in what it follows.
    """
    with _reporting("alignment", *_identity(cls)):
        plugin = _instantiate("alignment", cls, params, "check_alignment")
        world, state = tiny_world()
        carry = _call("start()", lambda: plugin.start(world, _streams().at(-1)), _inputs(world, state))
        _batched("start()", carry)
        for step in (0, 1, 4):  # rules act at their cadence: look at a few steps
            state.world_step = torch.full((B,), step)

            def update(st: State) -> Any:
                st.world_step = state.world_step
                return plugin.update(st.values, st, world, copy.deepcopy(carry), _streams().at(step + 1))

            out = _run("update()", lambda: update(state), _inputs(world, state),
                       lambda out: _step_output("update()", out, state))
            carry = out.carry
            _check_absent_unheard("update()", state, lambda st: _moved_or_same(update(st), st))
            first, _ = _absent_twins(state)
            if not torch.equal(_moved_or_same(update(first), first)[ABSENT], first.values[ABSENT]):
                raise _Failure("update() moved an absent agent (state.active False); leave inactive agents' "
                               "values as they are")
