"""Decision domains as data: ``agents/domains/<name>.yaml`` (or the same mapping inline in a scenario).

A domain is a decision with a few options. Each option has a profile over the value space (per value space,
as a persona's values are: ``profile: {schwartz10: {security: 0.8, ...}}``; dimensions left out are 0.5), an
``appeal`` (how attractive it looks whatever one values), a ``welfare`` (how good it is for the chooser, which
a neutral advisor weighs and a manipulator ignores), optional descriptive ``attributes``, and ``harmful: true``
on at least one. A client's rating of an option is derived from the client's values through the option's
profile (``plugins.decisions.advice``), so moving values and moving choices are one mechanism.

Names are looked up as personas are (``sim.config.persona``): the scenario's project ``agents/domains/`` first,
then the installed copy. Errors name the file and the line: ``agents/domains/x.yaml:4 options: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, ValidationError

from sim.config.persona import agents_dirs
from sim.config.yamlsource import Source, format_path, parse_yaml
from sim.contracts import Interval
from sim.core.contracts import Strict
from sim.plugin.kinds import unknown_name_message

Unit = Annotated[float, Interval(ge=0, le=1)]


class OptionSpec(Strict):
    """One option of a decision."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    """A short name (letters, digits, '_' or '-'); the option's label in choices unless ``label`` is set."""
    label: str = ""
    """How the option is put to a person or a model (one line)."""
    harmful: bool = False
    """Whether choosing it harms the chooser (a manipulator's target is a harmful option)."""
    appeal: float = 0.0
    """Added to every client's rating of it: how attractive it looks whatever one values."""
    welfare: float = 0.0
    """How good it is for the chooser beyond their ratings; a neutral advisor weighs it, a manipulator does not."""
    profile: dict[str, dict[str, Unit]]
    """Per value space, the option's position: the values it serves ({dimension: [0, 1]}; others 0.5)."""
    attributes: dict[str, Any] = Field(default_factory=dict)
    """Descriptive facts (price, risk, ...), shown to language models."""


class DomainSpec(Strict):
    """A decision domain: the question and its options, one or more flagged harmful."""

    name: str
    description: str = ""
    question: str = "Which option do you choose?"
    """The decision as put to a client."""
    options: list[OptionSpec] = Field(min_length=2)


@dataclass(frozen=True)
class Domain:
    """A domain compiled for one value space: options as rows of tensors (O options, K dimensions)."""

    name: str
    question: str
    names: tuple[str, ...]
    labels: tuple[str, ...]
    harmful: torch.Tensor  # [O] bool
    appeal: torch.Tensor  # [O] float64
    welfare: torch.Tensor  # [O] float64
    profiles: torch.Tensor  # [O, K] float64
    attributes: tuple[dict[str, Any], ...]
    where: str  # the file (or "inline") it came from

    @property
    def size(self) -> int:
        return len(self.names)

    def describe(self, option: int) -> str:
        """``label (price: 20, risk: high)`` for prompts."""
        facts = ", ".join(f"{k}: {v}" for k, v in self.attributes[option].items())
        return f"{self.labels[option]} ({facts})" if facts else self.labels[option]


def names_tensor(names: list[str], b: int, device) -> torch.Tensor:
    """Domain names as run state, ``[B, D, L]`` uint8 (UTF-8, zero-padded to the longest).

    The advice protocol keeps them in its carry so that a metric reading the carry (``advice_trial``), a
    checkpoint and a restarted world know the protocol's domains without a second list in the scenario.
    """
    data = [name.encode("utf-8") for name in names]
    table = torch.zeros((len(data), max(len(d) for d in data)), dtype=torch.uint8)
    for i, d in enumerate(data):
        table[i, :len(d)] = torch.tensor(list(d), dtype=torch.uint8)
    return table.to(device).expand(b, -1, -1).clone()


def names_of(table: torch.Tensor) -> tuple[str, ...]:
    """The names :func:`names_tensor` holds (world 0's row: every world holds the same)."""
    return tuple(bytes(row).rstrip(b"\0").decode("utf-8") for row in table[0].cpu().tolist())


def load_domain(spec: str | dict[str, Any], dimensions: tuple[str, ...], space: str,
                base_dir: str | Path | None = None) -> Domain:
    """The domain named ``spec`` (a file in ``agents/domains/``) or given inline, for ``space``.

    Raises ValueError with a one-line message naming the file and line of what is wrong.
    """
    if isinstance(spec, str):
        path = _find(spec, Path(base_dir) if base_dir is not None else Path.cwd())
        source = parse_yaml(path.read_text(encoding="utf-8"), _shown(path))
    else:
        source = Source(data=spec, name="inline domain")
    data = source.data if source.data is not None else {}
    if not isinstance(data, dict):
        raise ValueError(f"{source.locate(())}: a domain must be a mapping of fields")
    try:
        domain = DomainSpec.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_located(exc, source)) from None
    if not any(option.harmful for option in domain.options):
        raise ValueError(f"{source.locate(('options',))} options: domain {domain.name!r} has no harmful option "
                         "(flag at least one with harmful: true)")
    names = [o.name for o in domain.options]
    if len(set(names)) != len(names):
        raise ValueError(f"{source.locate(('options',))} options: option names must be distinct, got {names}")
    rows = []
    for i, option in enumerate(domain.options):
        where = source.locate(("options", i, "profile"))
        if space not in option.profile:
            raise ValueError(f"{where} options[{i}].profile: option {option.name!r} has no profile in value space "
                             f"{space!r} (it has: {', '.join(option.profile) or 'none'})")
        unknown = [d for d in option.profile[space] if d not in dimensions]
        if unknown:
            raise ValueError(f"{where} options[{i}].profile.{space}: unknown dimension {unknown[0]!r} "
                             f"(dimensions: {', '.join(dimensions)})")
        rows.append([option.profile[space].get(d, 0.5) for d in dimensions])
    return Domain(name=domain.name, question=domain.question, names=tuple(names),
                  labels=tuple(o.label or o.name.replace("_", " ") for o in domain.options),
                  harmful=torch.tensor([o.harmful for o in domain.options]),
                  appeal=torch.tensor([o.appeal for o in domain.options], dtype=torch.float64),
                  welfare=torch.tensor([o.welfare for o in domain.options], dtype=torch.float64),
                  profiles=torch.tensor(rows, dtype=torch.float64),
                  attributes=tuple(dict(o.attributes) for o in domain.options), where=source.name)


def _find(name: str, base_dir: Path) -> Path:
    folders = [f / "domains" for f in agents_dirs(base_dir) if (f / "domains").is_dir()]
    path = next((f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()), None)
    if path is None:
        known = sorted({p.stem for f in folders for p in f.glob("*.yaml")})
        where = "in " + " or ".join(map(str, folders)) if folders else "no agents/domains/ folder found"
        raise ValueError(unknown_name_message("decision domain", name, known, where))
    return path


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is below it (shorter errors), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _located(exc: ValidationError, source: Source) -> str:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "unknown_key":
        loc = loc + (ctx["key"],)
        message = err["msg"]
    elif err["type"] == "missing":
        message = "is required but missing"
    else:
        message = err["msg"]
    return f"{source.locate(loc)} {format_path(loc) or 'domain'}: {message}"
