"""Report by exception: send a point's reading when it changed, not every time it is polled.

A rule in ``[[report]]`` (first match by point-name pattern wins, so list the specific ones
first) says when a reading is worth sending:

- its quality differs from the last one sent (always, whatever the rule);
- its value moved by more than ``deadband`` (absolute) or ``deadband_percent`` of the last sent
  value (numbers), or differs at all (other types; a 0 deadband: any change);
- ``max_silence`` has passed since the last one sent (a heartbeat: a quiet point still shows it
  is alive and what it reads);
- and in every case no sooner than ``min_interval`` after the last one sent.

Readings held back take no sequence number: they are not lost, they are "unchanged". Each
batch says how many were held back since the one before and over which time (key 13), and
each series of a point under a rule carries the point's heartbeat (series option 2,
docs/wire-format.md), so the platform can tell a point that did not change from one that went
silent: no reading of it for longer than its heartbeat.
"""

from __future__ import annotations

import fnmatch
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway._wire import Unchanged

if TYPE_CHECKING:
    from collections.abc import Sequence

    from drivers.api import Reading, Value
    from gateway.config import ReportRule

__all__ = ["ReportFilter", "Unchanged"]

#: Points the filter remembers at most (a driver that invents names must not grow it forever).
_MAX_POINTS = 200_000


@dataclass(slots=True)
class _State:
    rule: ReportRule | None
    value: Value = None
    quality: int = -1
    sent_ts: int | None = None
    held: int = 0  # readings held back since the last one sent
    held_first: int = 0
    held_last: int = 0
    last_held: Reading | None = None


class ReportFilter:
    """Per-point state; :meth:`filter` on the loop, :meth:`take_unchanged` from any thread."""

    def __init__(self, rules: Sequence[ReportRule]) -> None:
        self.rules = list(rules)
        self._points: dict[str, _State] = {}
        self._beats: dict[str, int] = {}
        self._returned: Unchanged | None = None
        self._lock = threading.Lock()
        self.held = 0
        self.passed = 0

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _state(self, point: str) -> _State:
        st = self._points.get(point)
        if st is None:
            if len(self._points) >= _MAX_POINTS:
                self._points.clear()  # forgets; the next reading of each point is sent
                self._beats = {}
            rule = next((r for r in self.rules if fnmatch.fnmatchcase(point, r.points)), None)
            st = self._points[point] = _State(rule)
            if rule is not None:
                self._beats = {**self._beats, point: round(rule.max_silence * 1000)}
        return st

    def filter(self, readings: list[Reading]) -> list[Reading]:
        """The readings to store; the rest are counted as unchanged."""
        out: list[Reading] = []
        with self._lock:
            for r in readings:
                point = r[0]
                st = self._state(point) if type(point) is str else None
                if st is None or st.rule is None or type(r[1]) is not int \
                        or self._send(st, st.rule, r):
                    if st is not None and st.rule is not None and type(r[1]) is int:
                        st.value, st.quality, st.sent_ts = r[2], int(r[3]), r[1]
                    out.append(r)
                    continue
                if not st.held:
                    st.held_first = r[1]
                st.held += 1
                st.held_last = r[1]
                st.last_held = r
        self.held += len(readings) - len(out)
        self.passed += len(out)
        return out

    @staticmethod
    def _send(st: _State, rule: ReportRule, r: Reading) -> bool:
        if st.sent_ts is None or int(r[3]) != st.quality:
            return True
        since = r[1] - st.sent_ts
        if since < rule.min_interval * 1000:
            return False
        if since >= rule.max_silence * 1000:
            return True
        return _changed(st.value, r[2], rule)

    def flush(self) -> list[Reading]:
        """At stop: each point's last held-back reading, to be sent (it no longer counts as
        unchanged; the ones before it still do)."""
        out = []
        with self._lock:
            for st in self._points.values():
                r = st.last_held
                if st.held and r is not None:
                    out.append(r)
                    st.held -= 1  # held_last stays a bound of the rest
                    st.value, st.quality, st.sent_ts = r[2], int(r[3]), r[1]
                st.last_held = None
        self.held -= len(out)
        self.passed += len(out)
        return out

    def heartbeats(self) -> dict[str, int]:
        """Point -> heartbeat (ms) of the points under a rule (a new dict when one is added,
        so a caller may keep the one it got)."""
        return self._beats

    def take_unchanged(self) -> Unchanged | None:
        """How many readings were held back since the last call, and when; start over."""
        count, first, last = 0, None, None
        with self._lock:
            back, self._returned = self._returned, None
            if back is not None:
                count, first, last = back.count, back.first_ts, back.last_ts
            for st in self._points.values():
                if st.held:
                    count += st.held
                    first = st.held_first if first is None else min(first, st.held_first)
                    last = st.held_last if last is None else max(last, st.held_last)
                    st.held = 0
                    st.last_held = None  # counted as unchanged now: not sent at stop
        if not count or first is None or last is None:
            return None
        return Unchanged(count, first, last)

    def put_back(self, record: Unchanged | None) -> None:
        """A record whose batch did not go out: counted again with the next one."""
        if record is None:
            return
        with self._lock:
            self._returned = (record if self._returned is None else Unchanged(
                self._returned.count + record.count,
                min(self._returned.first_ts, record.first_ts),
                max(self._returned.last_ts, record.last_ts)))


def _changed(before: Value, now: Value, rule: ReportRule) -> bool:
    if type(before) in (int, float) and type(now) in (int, float):
        a, b = float(before), float(now)  # type: ignore[arg-type]
        if math.isnan(a) or math.isnan(b):
            return not (math.isnan(a) and math.isnan(b))
        delta = abs(b - a)
        if rule.deadband and delta > rule.deadband:
            return True
        if rule.deadband_percent and delta > abs(a) * rule.deadband_percent / 100:
            return True
        return not rule.deadband and not rule.deadband_percent and delta != 0
    return type(before) is not type(now) or before != now

