"""Logging: journald-friendly under systemd, key=value fields, repeats rate-limited.

Under systemd (stderr is the journal stream named by ``$JOURNAL_STREAM``) every line starts with
an sd-daemon(3) priority prefix such as ``<4>`` and carries no timestamp: journald stamps it.
On a console lines are timestamped. Fields passed as ``extra={"kv": {...}}`` (or rendered with
:func:`kv`) end the line as ``key=value`` pairs. :class:`RateLimitFilter` lets the first of a
run of similar messages through and then one summary per window.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RateLimitFilter", "flush_suppressed", "kv", "on_journal", "print_problem",
           "setup_logging"]

# sd-daemon(3) priority prefixes, read by journald from stderr (SD_DEBUG .. SD_CRIT).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
_SUMMARY = "_streetgate_summary"
_installed: RateLimitFilter | None = None


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else repr(v) if isinstance(v, bytes) else str(v)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def kv(**fields: Any) -> str:
    """``key=value`` pairs, values quoted when they hold spaces, quotes or ``=``."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)


def on_journal(stream: IO[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` (stderr) is the journal: ``$JOURNAL_STREAM`` is its device:inode."""
    env = os.environ if environ is None else environ
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not dev or not ino:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def print_problem(text: str, *, level: int = logging.ERROR, stream: IO[str] | None = None) -> None:
    """Write a message for a person to stderr; under systemd each line carries its priority.

    For what the CLI prints rather than logs (config errors, "cannot start: ..."), so that
    ``journalctl -p warning`` shows why the service stopped.
    """
    out = stream or sys.stderr
    if on_journal(out):
        prio = _PRIORITY.get(level, 3)
        text = "\n".join(f"<{prio}>{line}" for line in text.splitlines())
    out.write(text + "\n")
    out.flush()


class _Formatter(logging.Formatter):
    """``name: message key=value``, with a journald priority on every line or a timestamp."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        fields = getattr(record, "kv", None)
        if isinstance(fields, dict) and fields:
            text = f"{text} {kv(**fields)}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if not self.journal:
            return f"{self.formatTime(record, self.datefmt)} {record.levelname:<7} {text}"
        # journald reads each line on its own: prefix them all so a traceback keeps its level.
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


@dataclass
class _Run:
    started: float
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RateLimitFilter(logging.Filter):
    """The first of similar records passes; repeats within ``window`` s become one summary.

    Records are similar when logger, level and message template match, and so do their string
    arguments (device names, errors; numbers may differ), or their ``rate_key`` extra when given.
    A summary reads ``suppressed N similar messages in the last Xs: <latest message>``; it goes
    out with the next similar record after the window, or from :meth:`flush` (call it
    periodically) when none comes.
    """

    def __init__(self, window: float = 60.0, *, max_keys: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._runs: dict[tuple[Any, ...], _Run] = {}
        self._lock = threading.Lock()
        self.emit: Callable[[logging.LogRecord], object] | None = None

    @staticmethod
    def key(record: logging.LogRecord) -> tuple[Any, ...]:
        explicit = getattr(record, "rate_key", None)
        if explicit is not None:
            parts: tuple[Any, ...] = (explicit,)
        else:
            args = record.args if isinstance(record.args, tuple) else ()
            parts = tuple(a for a in args if isinstance(a, str))
        return (record.name, record.levelno, str(record.msg), *parts)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        with self._lock:
            return self._admit(record)

    def _admit(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = self.key(record)
        run = self._runs.get(key)
        if run is None:
            self._remember(key, _Run(now))
            return True
        if now - run.started < self.window:
            run.suppressed += 1
            run.last = record
            return False
        if run.suppressed:
            _summarize(record, run.suppressed, now - run.started)
        self._runs[key] = _Run(now)
        return True

    def _remember(self, key: tuple[Any, ...], run: _Run) -> None:
        if len(self._runs) >= self.max_keys:
            for record in self._due(force=True):
                self._emit(record)
        self._runs[key] = run

    def flush(self, *, force: bool = False) -> int:
        """Emit the summaries of runs whose window is over (all runs when ``force``)."""
        with self._lock:
            due = self._due(force=force)
        for record in due:
            self._emit(record)
        return len(due)

    def _due(self, *, force: bool) -> list[logging.LogRecord]:
        now = self._clock()
        done = [k for k, r in self._runs.items() if force or now - r.started >= self.window]
        out = []
        for k in done:
            run = self._runs.pop(k)
            if run.suppressed and run.last is not None:
                record = logging.makeLogRecord(run.last.__dict__)
                _summarize(record, run.suppressed, now - run.started)
                out.append(record)
        return out

    def _emit(self, record: logging.LogRecord) -> None:
        if self.emit is not None:
            self.emit(record)


def _summarize(record: logging.LogRecord, count: int, span: float) -> None:
    """Turn ``record`` into the summary of ``count`` similar messages over ``span`` seconds."""
    message = record.getMessage()
    record.msg = "suppressed %d similar messages in the last %.0fs: %s"
    record.args = (count, span, message)
    record.exc_info = None
    record.exc_text = None
    setattr(record, _SUMMARY, True)


def flush_suppressed() -> int:
    """Emit due summaries of the filter :func:`setup_logging` installed; returns how many."""
    return _installed.flush() if _installed is not None else 0


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (it may be swapped after setup, e.g. by a
    test harness or a daemonizing wrapper), not the object it was at setup."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def setup_logging(level: str, *, window: float = 60.0, stream: IO[str] | None = None) -> None:
    """Log to stderr: journald-style under systemd, timestamped on a console; rate-limited."""
    global _installed  # noqa: PLW0603 - one process-wide logging setup
    out = stream or sys.stderr
    handler = logging.StreamHandler(out) if stream is not None else _StderrHandler()
    handler.setFormatter(_Formatter(journal=on_journal(out)))
    limiter = RateLimitFilter(window)
    limiter.emit = handler.handle
    handler.addFilter(limiter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("pymodbus").setLevel(max(logging.WARNING, root.level))
    _installed = limiter
