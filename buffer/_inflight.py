"""Leases in flight, kept in memory only: each covers one contiguous seq span.

Seqs only grow, so once a lease takes every stored row in ``[lo, hi]`` no other row can ever
appear in that span; a lease is therefore fully described by its span.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Inflight", "Span"]


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    lo: int
    hi: int
    rows: int
    gap_keys: tuple[int, ...]


class Inflight:
    """Disjoint spans of leased seqs, sorted, plus the gaps that ride with them."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._spans: list[Span] = []
        self._by_id: dict[int, Span] = {}
        self.rows = 0
        self.gap_keys: set[int] = set()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, lease_id: int, span: Span) -> None:
        if span.lo <= span.hi:
            i = bisect.bisect_left(self._starts, span.lo)
            self._starts.insert(i, span.lo)
            self._spans.insert(i, span)
        self._by_id[lease_id] = span
        self.rows += span.rows
        self.gap_keys.update(span.gap_keys)

    def get(self, lease_id: int) -> Span | None:
        return self._by_id.get(lease_id)

    def pop(self, lease_id: int) -> Span | None:
        span = self._by_id.pop(lease_id, None)
        if span is None:
            return None
        if span.lo <= span.hi:
            i = self._spans.index(span)
            del self._starts[i]
            del self._spans[i]
        self.rows -= span.rows
        self.gap_keys.difference_update(span.gap_keys)
        return span

    def window(self, lo: int) -> tuple[int, int | None]:
        """The first seq >= ``lo`` outside every span, and where the next span starts (or None)."""
        while True:
            i = bisect.bisect_right(self._starts, lo) - 1
            if i >= 0 and self._spans[i].hi >= lo:
                lo = self._spans[i].hi + 1
                continue
            nxt = self._starts[i + 1] if i + 1 < len(self._starts) else None
            return lo, nxt

    def free(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Ranges inside ``[lo, hi]`` that no span covers, ascending."""
        for span in self._spans:
            if span.hi < lo:
                continue
            if span.lo > hi:
                break
            if span.lo > lo:
                yield lo, span.lo - 1
            lo = span.hi + 1
        if lo <= hi:
            yield lo, hi
