"""Value spaces: named taxonomies of K value dimensions, each in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

BUILTIN_SPACES: dict[str, tuple[str, ...]] = {
    # Schwartz's ten basic values.
    "schwartz10": (
        "self_direction", "stimulation", "hedonism", "achievement", "power",
        "security", "conformity", "tradition", "benevolence", "universalism",
    ),
    # Moral Foundations Theory (with liberty).
    "mft6": ("care", "fairness", "loyalty", "authority", "sanctity", "liberty"),
    # The two axes of the World Values Survey cultural map.
    "wvs2": ("traditional_secular", "survival_self_expression"),
}


@dataclass(frozen=True)
class ValueSpace:
    """A value taxonomy: ``name`` and the ordered ``dimensions`` (K = len(dimensions))."""

    name: str
    dimensions: tuple[str, ...]

    @property
    def k(self) -> int:
        return len(self.dimensions)

    def index(self, dimension: str) -> int:
        return self.dimensions.index(dimension)


def value_space(name: str, dimensions: tuple[str, ...] | None = None) -> ValueSpace:
    """Return the built-in space ``name``, or a custom one when ``dimensions`` are given."""
    if dimensions is not None:
        return ValueSpace(name, tuple(dimensions))
    return ValueSpace(name, BUILTIN_SPACES[name])
