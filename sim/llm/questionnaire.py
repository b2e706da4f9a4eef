"""Value questionnaires: ask an LLM agent, in its persona, where it stands on each value dimension.

A questionnaire is ``agents/questionnaires/<space>.yaml``: a few first-person
statements per dimension, each answered on an agreement scale (1 to 6 in the
shipped ones). ``reverse: true`` marks a statement that someone who holds the
value would disagree with. Scoring takes the first integer of each answer,
flips reverse-keyed items, rescales to [0, 1] and averages per dimension::

    questionnaire = load_questionnaire("schwartz10", space.dimensions)
    requests = questionnaire.requests(persona_prompt, seed=7, tag={"agent": 3}, hints={"profile": values})
    values, notes = questionnaire.score(complete(backend, requests))

The offline ``scripted`` backend has no persona to consult, so each request
carries hints (never shown to a real model) from which :func:`scripted_answer`
gives the answer the persona's profile implies::

    hints = {"purpose": "questionnaire", "dimension": name, "reverse": bool,
             "profile": {dimension: value in [0, 1]}, "scale": [min, max]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import Field, ValidationError, model_validator

from ..errors import ScenarioError
from .contract import ChatRequest, ChatResponse, Sampling
from ..config.schema import Strict
from ..config.yamlsource import Source, format_path, parse_yaml

# ``sim/data/agents`` is the checkout's ``agents/`` (a link) and, in a wheel, the copy shipped with the package.
QUESTIONNAIRE_DIR = Path(__file__).resolve().parent.parent / "data" / "agents" / "questionnaires"
# Deterministic and short: an answer is one number.
ANSWER_SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=8)
DEFAULT_SCALE = (1, 6)


@dataclass(frozen=True)
class Item:
    """One statement: the ``dimension`` it measures, its ``text``, and whether agreeing means holding less of it."""

    dimension: str
    text: str
    reverse: bool = False


@dataclass(frozen=True)
class Questionnaire:
    """Items over the ``dimensions`` of one value space, answered on the scale ``scale_min..scale_max``."""

    space: str
    dimensions: tuple[str, ...]
    items: tuple[Item, ...]
    scale_min: int = DEFAULT_SCALE[0]
    scale_max: int = DEFAULT_SCALE[1]
    labels: tuple[str, ...] = ()
    source: str = "<memory>"

    def prompt(self, item: Item) -> str:
        """The user turn that asks for one item."""
        lo, hi = self.scale_min, self.scale_max
        lines = ["Rate how much you agree with this statement, speaking as yourself:", "", f'"{item.text}"', ""]
        if self.labels:
            lines.append(", ".join(f"{lo + i} = {label}" for i, label in enumerate(self.labels)))
        lines.append(f"Answer with one number from {lo} to {hi} and nothing else.")
        return "\n".join(lines)

    def requests(self, system_prompt: str, seed: int, tag: dict, hints: dict,
                 sampling: Sampling = ANSWER_SAMPLING) -> list[ChatRequest]:
        """One request per item, in item order: the persona's system prompt, then the item.

        ``tag`` (who asks, for the log) and ``hints`` (pass ``{"profile": {dim: value}}``
        for the scripted backend) are extended with the item's purpose, dimension and keying.
        """
        out = []
        for index, item in enumerate(self.items):
            about = {"purpose": "questionnaire", "dimension": item.dimension}
            out.append(ChatRequest(
                messages=({"role": "system", "content": system_prompt},
                          {"role": "user", "content": self.prompt(item)}),
                sampling=sampling, seed=seed,
                hints={**hints, **about, "reverse": item.reverse, "scale": [self.scale_min, self.scale_max]},
                tag={**tag, **about, "item": index},
            ))
        return out

    def score(self, responses: list[ChatResponse]) -> tuple[list[float | None], list[str]]:
        """Answers, one per item in order -> (per dimension a value in [0, 1] or None, notes).

        An answer without a number on the scale is noted and skipped; a
        dimension left with no usable answer is ``None``.
        """
        if len(responses) != len(self.items):
            raise ValueError(f"{len(responses)} answers for the {len(self.items)} items of {self.source}")
        sums = dict.fromkeys(self.dimensions, 0.0)
        counts = dict.fromkeys(self.dimensions, 0)
        notes: list[str] = []
        for index, (item, response) in enumerate(zip(self.items, responses)):
            answer, problem = self._answer(response)
            if problem:
                notes.append(f"item {index} ({item.dimension}): {problem}")
                continue
            if item.reverse:
                answer = self.scale_min + self.scale_max - answer
            sums[item.dimension] += (answer - self.scale_min) / (self.scale_max - self.scale_min)
            counts[item.dimension] += 1
        values = [sums[d] / counts[d] if counts[d] else None for d in self.dimensions]
        notes += [f"{d}: no usable answer" for d in self.dimensions if not counts[d]]
        return values, notes

    def _answer(self, response: ChatResponse) -> tuple[int, str]:
        if response.error is not None:
            return 0, f"no answer (the backend failed: {response.error})"
        match = re.search(r"\d+", response.text)
        if match is None:
            return 0, f"no number in the answer {_preview(response.text)}"
        answer = int(match.group(0))
        if not self.scale_min <= answer <= self.scale_max:
            return 0, f"{answer} is off the scale {self.scale_min}..{self.scale_max}"
        return answer, ""


def scripted_answer(hints: Mapping[str, Any]) -> str:
    """The answer a persona with ``hints["profile"]`` gives to the item described by ``hints``.

    ``round(min + (max - min) * v)`` for the dimension's value v (clamped to
    [0, 1]), flipped for a reverse-keyed item; ``scale`` defaults to 1..6.
    Scoring these answers recovers the profile to within half a scale step.
    """
    try:
        dimension, profile = hints["dimension"], hints["profile"]
        value = float(profile[dimension])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"scripted questionnaire hints need 'dimension' and a 'profile' with a number for it "
                         f"({type(exc).__name__}: {exc}); got keys {sorted(hints)}") from None
    lo, hi = hints.get("scale", DEFAULT_SCALE)
    answer = round(lo + (hi - lo) * min(max(value, 0.0), 1.0))
    return str(lo + hi - answer if hints.get("reverse", False) else answer)


# ---------------------------------------------------------------- the file


class _Scale(Strict):
    min: int
    max: int
    labels: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self):
        if self.max <= self.min:
            raise ValueError(f"max must be above min, got min {self.min}, max {self.max}")
        if self.labels and len(self.labels) != self.max - self.min + 1:
            raise ValueError(f"labels must name every point from {self.min} to {self.max} "
                             f"({self.max - self.min + 1} labels), got {len(self.labels)}")
        return self


class _Item(Strict):
    dimension: str
    text: Annotated[str, Field(min_length=1)]
    reverse: bool = False


class _File(Strict):
    space: str
    scale: _Scale
    items: Annotated[tuple[_Item, ...], Field(min_length=1)]


def load_questionnaire(space_name: str, dimensions: tuple[str, ...] | list[str],
                       directory: Path | None = None) -> Questionnaire:
    """Read ``<directory>/<space_name>.yaml`` (default: the project's ``agents/questionnaires``) and check it.

    Every item must measure one of ``dimensions`` and every dimension must
    have an item; errors are :class:`~sim.errors.ScenarioError` naming the file.
    """
    folder = Path(directory) if directory is not None else QUESTIONNAIRE_DIR
    path = folder / f"{space_name}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ScenarioError(f"no questionnaire for value space {space_name!r}: {path} does not exist "
                            f"(questionnaires in {folder}: {', '.join(shipped) or 'none'})")
    source = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    try:
        spec = _File.model_validate(source.data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise _error(source, tuple(error["loc"]), error["msg"]) from None
    dims = tuple(dimensions)
    if spec.space != space_name:
        raise _error(source, ("space",), f"the file is for space {spec.space!r}, expected {space_name!r}")
    for index, item in enumerate(spec.items):
        if item.dimension not in dims:
            raise _error(source, ("items", index, "dimension"),
                         f"{item.dimension!r} is not a dimension of {space_name} ({', '.join(dims)})")
    uncovered = [d for d in dims if not any(item.dimension == d for item in spec.items)]
    if uncovered:
        raise ScenarioError(f"no item measures {', '.join(uncovered)}; add at least one per dimension",
                            location=str(path), path="items")
    return Questionnaire(
        space=space_name, dimensions=dims,
        items=tuple(Item(item.dimension, item.text, item.reverse) for item in spec.items),
        scale_min=spec.scale.min, scale_max=spec.scale.max, labels=spec.scale.labels, source=str(path))


def _error(source: Source, path: tuple, message: str) -> ScenarioError:
    return ScenarioError(message, location=source.locate(path), path=format_path(path) or None)


def _preview(text: str, limit: int = 40) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")
