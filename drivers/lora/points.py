"""What a payload decoder returns: named values with units, and why a part is missing."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from drivers.api import Quality, Value

__all__ = ["DecodeError", "Decoded", "Point", "decimals_of", "scaled"]


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    """One decoded value; ``name`` is the last part of the point name."""

    name: str
    value: Value
    unit: str | None = None
    quality: Quality = Quality.GOOD


@dataclasses.dataclass(frozen=True, slots=True)
class Decoded:
    """The points a payload gave, and the reason decoding stopped early (if it did)."""

    points: list[Point]
    error: str | None = None


class DecodeError(ValueError):
    """A payload the decoder cannot read at all."""


def decimals_of(step: float) -> int:
    """Decimal places a resolution needs: 0.1 -> 1, 0.25 -> 2, 5 -> 0."""
    exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def scaled(raw: int, scale: float, add: float = 0.0, decimals: int | None = None) -> int | float:
    """``raw * scale + add``; an integer stays an integer when scale is 1 and add 0."""
    if scale == 1 and add == 0:
        return raw
    places = decimals if decimals is not None else max(decimals_of(scale), decimals_of(add))
    return round(raw * scale + add, places)
