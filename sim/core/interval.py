"""Ranges of numbers, and the one way a number outside one is reported.

``Annotated[float, Interval(gt=0, le=1)]``, in a plugin's ``Params`` or in the
scenario schema, checks the number and, when it lies outside, fails with
``must be in (0, 1], got 1.5`` (with one bound: ``must be >= 1, got 0``). The
keywords are pydantic's ``Field`` bounds (``gt``, ``ge``, ``lt``, ``le``), so
``valuesim plugins show`` lists them the same way. Every range message of
valuesim is written by :meth:`Interval.message`, including those of a
plugin that still uses ``Field(gt=...)`` (``sim.config.scenario`` rewrites
pydantic's through it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True)
class Interval:
    """A range of numbers with open (``gt``, ``lt``) or closed (``ge``, ``le``) ends; missing ends are unbounded."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __post_init__(self) -> None:
        if (self.gt is not None and self.ge is not None) or (self.lt is not None and self.le is not None):
            raise TypeError("an Interval takes at most one lower bound (gt or ge) and one upper bound (lt or le)")

    @property
    def low(self) -> float | None:
        return self.gt if self.gt is not None else self.ge

    @property
    def high(self) -> float | None:
        return self.lt if self.lt is not None else self.le

    @property
    def closure(self) -> "Interval":
        """The same range with its ends included."""
        return Interval(ge=self.low, le=self.high)

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and math.isnan(x):
            return False
        return not ((self.gt is not None and x <= self.gt) or (self.ge is not None and x < self.ge)
                    or (self.lt is not None and x >= self.lt) or (self.le is not None and x > self.le))

    @property
    def brackets(self) -> str:
        """``(0, 1]`` (an unbounded end is ``-inf`` or ``inf``)."""
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        return f"{'(' if self.ge is None else '['}{low}, {high}{')' if self.le is None else ']'}"

    def __str__(self) -> str:
        """``in (0, 1]`` with both ends, ``> 0`` or ``<= 1`` with one."""
        low, high = self.low, self.high
        if low is not None and high is not None:
            return f"in {self.brackets}"
        if low is not None:
            return f"{'>' if self.gt is not None else '>='} {_number(low)}"
        if high is not None:
            return f"{'<' if self.lt is not None else '<='} {_number(high)}"
        return "a number"

    def message(self, given: Any) -> str:
        """``must be in (0, 1], got 1.5``; ``given`` is a number or already written out (``uniform on [0, 0.3)``)."""
        return f"must be {self}, got {_number(given)}"

    def error(self, given: Any) -> PydanticCustomError:
        """The validation error for ``given`` outside the interval; its message is :meth:`message`."""
        return PydanticCustomError("range", "{message}", {"message": self.message(given)})

    def check(self, value: Any) -> Any:
        """``value`` if it lies in the interval, else :meth:`error`."""
        if value not in self:
            raise self.error(value)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
