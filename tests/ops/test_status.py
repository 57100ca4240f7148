"""The status document, its file, the console rendering and `streetgate status`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from buffer.store import Store
from drivers.api import HealthBoard, Reading
from gateway.status import (
    StatusReporter,
    build_status,
    read_status,
    register_cli,
    render,
    status_path,
    summary,
    write_status_file,
)

NOW = 1_790_000_000.0


def _health() -> dict[str, Any]:
    board = HealthBoard(logging.getLogger("streetgate.driver.modbus.rs485-1"))
    board.device("meter-1").success()
    board.device("meter-2").failure("no response within 500ms (timeout)", "timeouts")
    board.device("meter-2").failing_since = NOW - 754
    board.count("polls", 40)
    return board.snapshot()


def _doc(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = Store(tmp_path / "buffer.db", synchronous="off")
    store.append([Reading("rs485-1/meter-1/v", int((NOW - 42) * 1000), 230.1, unit="V")] * 3)
    store.commit()
    stats = store.stats()
    store.close()
    args: dict[str, Any] = {
        "gateway_id": "cab-0042", "version": "0.1.0", "boot_id": "b00t", "started": NOW - 93784,
        "drivers": {"rs485-1": _health()}, "driver_kinds": {"rs485-1": "modbus"},
        "buffer": stats,
        "uplink": {"state": "connected", "inflight": 1, "last_error": None, "published": 9,
                   "acked": 8},
        "clock": {"synced": True, "source": "timesyncd"}, "counters": {"produced": 3},
        "now": NOW, "kid": "ab12",
    }
    args.update(overrides)
    return build_status(**args)


def test_document_carries_what_operators_need(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    json.dumps(doc)  # plain JSON, no custom types
    assert doc["state"] == "online"
    assert (doc["gateway"], doc["version"], doc["boot_id"]) == ("cab-0042", "0.1.0", "b00t")
    assert doc["uptime_s"] == 93784.0
    assert doc["pid"] == os.getpid()
    assert doc["kid"] == "ab12"
    d = doc["drivers"]["rs485-1"]
    assert d["driver"] == "modbus"
    assert not d["ok"]
    assert d["failing"] == ["meter-2"]
    assert d["health"]["devices"]["meter-1"]["state"] == "ok"
    m2 = d["health"]["devices"]["meter-2"]
    assert (m2["state"], m2["failing_since"]) == ("failing", NOW - 754)
    assert m2["last_error"] == "no response within 500ms (timeout)"
    assert m2["counters"] == {"timeouts": 1}
    assert d["health"]["counters"] == {"polls": 40}
    assert doc["buffer"]["depth"] == 3
    assert doc["buffer"]["oldest_age_s"] == 42.0
    assert doc["drops"] == {"buffer": 0, "gaps_pending": 0}
    assert doc["uplink"]["state"] == "connected"
    assert doc["health"] == "degraded"
    assert doc["problems"] == ["rs485-1/meter-2 failing"]


def test_problems_name_uplink_clock_and_drops(tmp_path: Path) -> None:
    doc = _doc(tmp_path, drivers={}, uplink={"state": "disconnected"},
               clock={"synced": False, "source": "timesyncd", "unsynced_since_seq": 17})
    assert doc["problems"] == ["uplink disconnected", "clock not synchronized"]
    ok = _doc(tmp_path / "2", drivers={})
    assert ok["health"] == "ok"


def test_render_reads_at_a_glance(tmp_path: Path) -> None:
    text = render(_doc(tmp_path), now=NOW + 5)
    lines = text.splitlines()
    assert lines[0] == "streetgate cab-0042  v0.1.0  up 1d 2h  pid " + str(os.getpid())
    assert lines[1] == "health   DEGRADED: rs485-1/meter-2 failing"
    assert lines[2].startswith("uplink   connected  inflight 1")
    assert lines[3].startswith("buffer   3 readings, oldest 42s ago")
    assert lines[4] == "clock    synchronized (timesyncd)"
    assert "  modbus:rs485-1" in lines[6]
    assert "FAILING (1)" in lines[6]
    assert lines[7].split() == ["meter-1", "ok"]
    assert "meter-2" in lines[8]
    assert "FAILING for 12m 39s (since " in lines[8]
    assert lines[9].strip() == "last error: no response within 500ms (timeout)"
    assert max(len(line) for line in lines) <= 100  # one console screen wide


def test_render_warns_about_a_stale_file_and_shows_offline(tmp_path: Path) -> None:
    text = render(_doc(tmp_path), now=NOW + 600)
    assert "!! status is 10m old" in text
    off = render({"state": "offline", "gateway": "cab-0042", "clean": True})
    assert off == "streetgate cab-0042  OFFLINE (stopped cleanly: True)\n"
    unsynced = render(_doc(tmp_path / "u", clock={"synced": False, "source": "timesyncd",
                                                   "unsynced_since_seq": 17}), now=NOW)
    assert "clock    NOT SYNCHRONIZED (timesyncd): readings since seq 17 are marked" in unsynced


def test_summary_is_one_line(tmp_path: Path) -> None:
    line = summary(_doc(tmp_path))
    assert line == "uplink connected; buffer 3 (oldest 42s); devices 1/2 ok"
    line = summary(_doc(tmp_path / "2", clock={"synced": False}))
    assert line.endswith("; clock NOT synchronized")


def test_status_file_is_atomic_and_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "run" / "status.json"
    old = os.umask(0o077)  # as under the unit's UMask=0077
    try:
        write_status_file(path, {"state": "online", "n": 1})
        write_status_file(path, {"state": "online", "n": 2})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_status(path) == {"state": "online", "n": 2}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temp files left


def test_status_path_prefers_the_runtime_directory(tmp_path: Path) -> None:
    assert status_path("status.json", state_dir="/var/lib/sg", runtime_dir="/run/sg") == \
        Path("/run/sg/status.json")
    assert status_path("status.json", state_dir="/var/lib/sg", runtime_dir="") == \
        Path("/var/lib/sg/status.json")
    assert status_path("/srv/x.json", runtime_dir="/run/sg") == Path("/srv/x.json")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streetgate")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_renders_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "status.json"
    write_status_file(path, _doc(tmp_path))
    assert _cli(["status", "--file", str(path)]) == 1  # a device failing: degraded
    out = capsys.readouterr().out
    assert out.startswith("streetgate cab-0042  v0.1.0")
    assert "meter-2" in out
    assert _cli(["status", "--file", str(path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["gateway"] == "cab-0042"


def test_cli_finds_the_file_through_the_config(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "cab-7"\nstate_dir = "{state}"\nstatus_socket = "st.json"\n')
    assert _cli(["status", "-c", str(conf)]) == 1
    assert "no status file at" in capsys.readouterr().err
    write_status_file(state / "st.json", _doc(tmp_path, gateway_id="cab-7", now=time.time(),
                                              drivers={}))
    assert _cli(["status", "-c", str(conf)]) == 0
    assert capsys.readouterr().out.startswith("streetgate cab-7")


@pytest.mark.parametrize(("case", "code"), [
    ("healthy", 0), ("degraded", 1), ("offline", 1), ("stale", 1), ("no file", 1)])
def test_status_exit_code_says_whether_the_gateway_runs_healthy(
        tmp_path: Path, case: str, code: int) -> None:
    now = time.time()
    docs: dict[str, dict[str, Any] | None] = {
        "healthy": _doc(tmp_path, drivers={}, now=now),
        "degraded": _doc(tmp_path, now=now),  # meter-2 failing
        "offline": {"state": "offline", "gateway": "cab-0042", "clean": True},
        "stale": _doc(tmp_path, drivers={}, now=now - 600),
        "no file": None,
    }
    path = tmp_path / "status.json"
    doc = docs[case]
    if doc is not None:
        write_status_file(path, doc)
    for extra in ([], ["--json"]):
        assert _cli(["status", "--file", str(path), *extra]) == code, case


def test_reporter_publishes_on_change_and_interval(tmp_path: Path) -> None:
    state = {"uplink": "disconnected"}
    published: list[str] = []
    summaries: list[str] = []

    async def build() -> dict[str, Any]:
        return build_status(gateway_id="g", version="0", boot_id="b", started=time.time(),
                            drivers={"s": _health()}, uplink={"state": state["uplink"]})

    path = tmp_path / "status.json"
    rep = StatusReporter(build, publish=lambda d: published.append(d["uplink"]["state"]),
                         path=path, interval=3600, on_summary=summaries.append)

    async def scenario() -> None:
        await rep.step()
        await rep.step()  # nothing changed: no second message
        state["uplink"] = "connected"
        await rep.step()
        rep.interval = 0
        await rep.step()  # the interval elapsed: refreshed although unchanged

    asyncio.run(scenario())
    assert published == ["disconnected", "connected", "connected"]
    assert summaries == ["uplink disconnected; buffer 0; devices 1/2 ok",
                         "uplink connected; buffer 0; devices 1/2 ok"]
    assert read_status(path)["uplink"]["state"] == "connected"
    assert rep.current["gateway"] == "g"


def _degraded_health() -> dict[str, Any]:
    board = HealthBoard(logging.getLogger("streetgate.driver.lora_forwarder.lora"))
    board.count("datagrams", 12)
    board.count("udp_drops", 3851)
    board.degrade("udp_drops", "kernel drops datagrams on UDP 127.0.0.1:1700: receive buffer full")
    board.degraded["udp_drops"]["since"] = NOW - 65
    board.extra["udp"] = {"rcvbuf": 425984, "rcvbuf_requested": 4194304, "rmem_max": 212992,
                          "drops": 3851, "queued": 0, "source": "proc"}
    return board.snapshot()


def test_degraded_driver_shows_in_problems_render_and_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, drivers={"lora": _degraded_health()},
               driver_kinds={"lora": "lora_forwarder"})
    assert doc["problems"] == ["lora degraded (udp_drops)"]
    assert doc["drivers"]["lora"]["degraded"] == ["udp_drops"]
    lines = render(doc, now=NOW).splitlines()
    assert lines[1] == "health   DEGRADED: lora degraded (udp_drops)"
    assert lines[6].split() == ["lora_forwarder:lora", "OK", "DEGRADED", "0", "device(s)"]
    assert lines[7].split()[:4] == ["udp_drops", "DEGRADED", "for", "1m"]
    assert lines[8].strip() == "kernel drops datagrams on UDP 127.0.0.1:1700: receive buffer full"
    assert lines[9].split() == ["udp", "socket", "rcvbuf", "425984", "B", "(asked", "4194304)",
                                "kernel", "drops", "3851"]
    assert lines[10].split() == ["counters", "datagrams", "12", "udp_drops", "3851"]
    assert max(len(line) for line in lines) <= 100
    path = tmp_path / "status.json"
    write_status_file(path, doc)
    assert _cli(["status", "--file", str(path), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)["drivers"]["lora"]["health"]
    assert shown["counters"]["udp_drops"] == 3851
    assert shown["state"] == "degraded"
    assert shown["udp"]["rcvbuf"] == 425984


def test_counters_wrap_at_a_console_width() -> None:
    board = HealthBoard(logging.getLogger("t"))
    for i in range(30):
        board.count(f"counter_number_{i:02d}", i + 1)
    doc = build_status(gateway_id="g", version="0", boot_id="b", started=NOW, now=NOW,
                       drivers={"x": board.snapshot()}, uplink={"state": "connected"})
    lines = render(doc, now=NOW).splitlines()
    wrapped = [line for line in lines if "counter_number_" in line]
    assert len(wrapped) > 1
    assert max(len(line) for line in lines) <= 100
    assert sum(line.count("counter_number_") for line in wrapped) == 30
    assert doc["problems"] == []
