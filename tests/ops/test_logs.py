"""Log lines: journald priorities, key=value fields, rate limiting of repeats."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import logs
from gateway.logs import RateLimitFilter, flush_suppressed, kv, on_journal, setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Take out what setup_logging installed: its stream is closed after the test (pytest
    puts back its own capture handlers per test phase)."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    installed = logs._installed
    yield
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)
    root.setLevel(level)
    logs._installed = installed


def test_kv_quotes_only_what_needs_it() -> None:
    assert kv(device="meter-1", code=2, ok=True) == "device=meter-1 code=2 ok=True"
    assert kv(error="no response", empty="", q='say "x"') == \
        'error="no response" empty="" q="say \\"x\\""'
    assert kv(skipped=None, raw=b"\x01") == "raw=b'\\x01'"


def test_journal_stream_detection(tmp_path: Path) -> None:
    with (tmp_path / "err").open("w") as f:
        st = os.fstat(f.fileno())
        assert on_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not on_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not on_journal(f, {})


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_under_journald_priorities_and_no_timestamps(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "stderr"
    with out.open("w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("debug", stream=f)
        log = logging.getLogger("streetgate.driver.modbus.rs485-1")
        log.warning("device %s failing: %s", "meter-1", "timeout",
                    extra={"kv": {"device": "meter-1", "errors": 1}})
        log.debug("poll took %d ms", 12)
        try:
            int("bad frame")
        except ValueError:
            log.exception("driver crashed")
    lines = _lines(out)
    assert lines[0] == ("<4>streetgate.driver.modbus.rs485-1: device meter-1 failing: timeout "
                        "device=meter-1 errors=1")
    assert lines[1] == "<7>streetgate.driver.modbus.rs485-1: poll took 12 ms"
    assert lines[2] == "<3>streetgate.driver.modbus.rs485-1: driver crashed"
    # Every traceback line keeps the error priority (journald reads lines one by one).
    assert len(lines) > 4
    assert all(line.startswith("<3>") for line in lines[2:])
    assert lines[-1] == "<3>ValueError: invalid literal for int() with base 10: 'bad frame'"


def test_on_a_console_lines_are_timestamped(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    setup_logging("info", stream=out)
    logging.getLogger("streetgate").info("gateway %s up", "cab-1", extra={"kv": {"drivers": 2}})
    line = out.getvalue().strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO    streetgate: gateway cab-1 up "
                        r"drivers=2", line), line


def _record(msg: str, *args: object, name: str = "streetgate.x",
            level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_rate_limit_first_passes_then_one_summary_per_window() -> None:
    now = [0.0]
    f = RateLimitFilter(60, clock=lambda: now[0])
    emitted: list[logging.LogRecord] = []
    f.emit = emitted.append
    passed = []
    for second in range(150):  # a device failing every second for 150 s
        now[0] = float(second)
        rec = _record("device %s failing: %s (after %d tries)", "meter-1", "timeout", second)
        if f.filter(rec):
            passed.append(rec.getMessage())
    summary = "suppressed 59 similar messages in the last 60s: device meter-1 failing: timeout"
    assert passed == [
        "device meter-1 failing: timeout (after 0 tries)",
        f"{summary} (after 60 tries)",
        f"{summary} (after 120 tries)",
    ]
    # It stops failing: the last run's summary comes out from flush().
    now[0] = 200.0
    assert f.flush() == 1
    assert emitted[0].getMessage() == ("suppressed 29 similar messages in the last 80s: "
                                       "device meter-1 failing: timeout (after 149 tries)")
    assert f.flush() == 0


def test_rate_limit_keeps_different_devices_and_levels_apart() -> None:
    now = [0.0]
    f = RateLimitFilter(60, clock=lambda: now[0])
    assert f.filter(_record("device %s failing: %s", "meter-1", "timeout"))
    assert f.filter(_record("device %s failing: %s", "meter-2", "timeout"))
    assert f.filter(_record("device %s failing: %s", "meter-1", "crc error"))
    assert f.filter(_record("device %s failing: %s", "meter-1", "timeout", level=logging.ERROR))
    assert not f.filter(_record("device %s failing: %s", "meter-1", "timeout"))
    rec = _record("queue at %d", 5)
    rec.rate_key = "queue"
    assert f.filter(rec)
    rec2 = _record("queue at %d", 6)
    rec2.rate_key = "queue"
    assert not f.filter(rec2)


def test_rate_limit_bounds_its_memory() -> None:
    f = RateLimitFilter(60, max_keys=10, clock=lambda: 0.0)
    emitted: list[logging.LogRecord] = []
    f.emit = emitted.append
    for i in range(25):
        assert f.filter(_record("device %s failing", f"m{i}"))
        assert not f.filter(_record("device %s failing", f"m{i}"))
    assert len(f._runs) <= 10
    assert emitted  # evicted runs said what they had suppressed


def test_setup_logging_rate_limits_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    setup_logging("info", window=0.3, stream=out)
    log = logging.getLogger("streetgate.driver.sim.s1")
    for _ in range(20):
        log.warning("device %s failing: %s", "d1", "timeout")
        time.sleep(0.01)
    time.sleep(0.35)
    assert flush_suppressed() == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("streetgate.driver.sim.s1: device d1 failing: timeout")
    assert re.search(r"WARNING streetgate.driver.sim.s1: suppressed 19 similar messages in the "
                     r"last \d+s: device d1 failing: timeout$", lines[1]), lines[1]
