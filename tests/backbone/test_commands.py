"""Signed commands against the real daemon, a real mosquitto and the sim driver's lights.

Each refusal leaves the light as it was; a command is performed once however often its
message arrives; results are signed, stored before they are published, and ride in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import Mosquitto
from gateway.command import (
    K_RESULTS,
    Command,
    Result,
    decode_result,
    sign_command,
    signature_ref,
)
from gateway.command_cli import send_command
from gateway.cose import kid_for, open1
from provisioning._files import write_public
from provisioning.keys import load_or_create_signing_key, public_key_pem
from tests.helpers.e2e import Run, running_gateway

LIGHT = "sim-1/dev-000/light_0"
LIGHT2 = "sim-1/dev-000/light_1"
SIM = {"sim": [{"instance": "sim-1", "devices": 1, "lights": 2, "interval": "50ms"}]}


def _commands(state: Path, platform: Any, **over: Any) -> dict[str, Any]:
    (state / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
    write_public(state / "keys" / "platform.pub", public_key_pem(platform).encode())
    section: dict[str, Any] = {
        "keys": ["keys/platform.pub"],
        "writable": [{"point": LIGHT, "min": 0, "max": 100, "step": 10,
                      "min_interval": "0s"}],
        "actions": [{"name": "lights-off", "point": LIGHT, "value": 0}],
    }
    section.update(over)
    return section


def _cmd(point: str | None = LIGHT, value: Any = 50, *, gateway: str = "cab-test",
         ttl_ms: int = 30_000, **kw: Any) -> Command:
    now = time.time_ns() // 1_000_000
    if point is None:
        return Command(gateway, uuid.uuid4().hex, now, now + ttl_ms, **kw)
    return Command(gateway, uuid.uuid4().hex, now, now + ttl_ms, point=point, value=value, **kw)


def _sim(run: Run) -> Any:
    return run.gateway.drivers["sim-1"][0]


def _level(run: Run) -> int:
    return int(next(g.state for g in _sim(run)._gens if g.point == LIGHT))  # noqa: SLF001


async def _send(broker: Mosquitto, cmd: Command, key: Any, gw_key: Any,
                wait: float = 20.0) -> Result | None:
    _m, final, _seen = await asyncio.to_thread(
        send_command, cmd, key, host=broker.host, port=broker.port, wait=wait,
        gateway_keys={kid_for(gw_key): gw_key})
    return final


async def _subscribed(run: Run) -> None:
    """Until the gateway is connected and has had time to subscribe to its command topic
    (a command published before that has no subscriber and the broker drops it)."""
    deadline = time.monotonic() + 10
    while not (run.gateway.uplink and run.gateway.uplink.connected):
        assert time.monotonic() < deadline, "the gateway did not connect"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)


RELAY = "bus-1/io-1/relay_1"


@contextlib.asynccontextmanager
async def _relay_cabinet(mosquitto: Mosquitto, state: Path, platform: Any, *,
                         retry: str) -> AsyncIterator[tuple[Run, Any, list[Any]]]:
    """A Modbus TCP I/O module (unit 2; its relay_1 pinned off, since the simulator's coils
    toggle every 5 s otherwise) behind a gateway that takes commands for that relay.

    Yields the running gateway (subscribed to its commands), the simulator and the list of
    writes the simulator received.
    """
    from drivers.modbus.sim import ModbusSimulator, profile_unit  # noqa: PLC0415

    sim = ModbusSimulator([profile_unit(2, "io-module", values={"relay_1": False})])
    writes: list[Any] = []
    sim.on_write = writes.append
    port = await sim.serve_tcp()
    device = {"interval": "200ms", "timeout": "200ms", "retries": 0, "dead_after": 2,
              "backoff_max": "300ms"}
    drivers = {"modbus": [{"instance": "bus-1", "bus": {
        "kind": "tcp", "host": "127.0.0.1", "port": port, "connect_timeout": "300ms",
        "reconnect_max": "300ms"},
        "devices": [{"name": "io-1", "unit": 2, "profile": "io-module", **device}]}]}
    section = _commands(state, platform.public_key(), writable=[
        {"point": RELAY, "allowed": [True, False], "min_interval": "0s"}], actions=[],
        retry=retry)
    try:
        async with running_gateway(drivers, mosquitto, state, commands=section) as run:
            await _subscribed(run)
            yield run, sim, writes
    finally:
        await sim.close()


def _gw_key(state: Path) -> Any:
    return load_or_create_signing_key(state / "keys" / "signing.key").public_key()


@pytest.fixture
def platform(tmp_path: Path) -> Any:
    return load_or_create_signing_key(tmp_path / "platform.key")


def test_write_is_performed_read_back_and_seen_in_readings(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state,
                                   commands=_commands(state, platform.public_key())) as run:
            await _subscribed(run)
            res = await _send(mosquitto, _cmd(value=70), platform, _gw_key(state))
            assert res is not None and (res.status, res.value, res.point) == ("done", 70, LIGHT)
            assert _level(run) == 70
            await run.collect_until(lambda rs: any(r.point == LIGHT and r.value == 70
                                                   for r in rs))
            res = await _send(mosquitto, _cmd(None, action="lights-off"), platform,
                              _gw_key(state))
            assert res is not None and (res.status, res.value) == ("done", 0)
            assert _level(run) == 0
            status = run.gateway.status()["commands"]
            assert status["done"] == 2 and status["recent"][-1]["status"] == "done"

    asyncio.run(scenario())


def test_every_refusal_has_its_reason_and_leaves_the_light_alone(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"
    forger = load_or_create_signing_key(tmp_path / "forger.key")
    section = _commands(state, platform.public_key())
    section["writable"].append({"point": LIGHT2, "allowed": [True], "min_interval": "1h"})

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state, commands=section) as run:
            await _subscribed(run)
            gw = _gw_key(state)
            ok = await _send(mosquitto, _cmd(value=30), platform, gw)
            assert ok is not None and ok.status == "done"
            writes = _sim(run).writes
            cases: list[tuple[Command, Any, str]] = [
                (_cmd(value=90), forger, "unknown-key"),
                (_cmd(value=90, gateway="cab-other"), platform, "wrong-gateway"),
                (dataclasses.replace(_cmd(value=90), issued=1, expires=2), platform,
                 "expired"),
                (_cmd("sim-1/dev-000/energy", 5), platform, "not-writable"),
                (_cmd(value=110), platform, "out-of-range"),
                (_cmd(value=-10), platform, "out-of-range"),
                (_cmd(value=35), platform, "out-of-range"),  # not on the step of 10
                (_cmd(value="90"), platform, "out-of-range"),  # text, not a number
                (_cmd(LIGHT2, False), platform, "not-allowed"),
                (_cmd(LIGHT2, 100), platform, "not-allowed"),  # 100 is not True
                (_cmd(None, action="self-destruct"), platform, "unknown-action"),
                (_cmd(None, config=b"[gateway]\n"), platform, "not-allowed"),
                (_cmd(value=90, ttl_ms=30 * 86400_000), platform, "not-allowed"),
            ]
            for cmd, key, reason in cases:
                # On this gateway's topic whatever the command says (wrong-gateway).
                res = await asyncio.to_thread(_raw_roundtrip, mosquitto,
                                              sign_command(cmd, key), gw)
                assert res is not None, reason
                # A message that does not verify is not trusted for its id either.
                want_id = "?" if reason == "unknown-key" else cmd.id
                assert (res.reason, res.id) == (reason, want_id), res
                assert res.ref == signature_ref(sign_command(cmd, key))
                assert res.status in ("rejected", "expired")
                assert _level(run) == 30, reason
            # A tampered signature.
            msg = bytearray(sign_command(_cmd(value=90), platform))
            msg[-1] ^= 1
            sub_res = await asyncio.to_thread(_raw_roundtrip, mosquitto, bytes(msg), gw)
            assert sub_res is not None and sub_res.reason == "bad-signature"
            # A rate limit: the second light may be written once an hour.
            sim = _sim(run)
            first = await _send(mosquitto, _cmd(LIGHT2, True), platform, gw)
            second = await _send(mosquitto, _cmd(LIGHT2, True), platform, gw)
            assert first is not None and first.status == "done"
            assert second is not None and second.reason == "rate-limited"
            assert sim.writes == writes + 1
            assert _level(run) == 30

    asyncio.run(scenario())


def _raw_roundtrip(broker: Mosquitto, message: bytes, gw: Any) -> Result | None:
    """Publish raw bytes on the command topic; the first rejected result back."""
    import queue  # noqa: PLC0415

    from gateway.command_cli import _publish  # noqa: PLC0415
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415

    sub = BatchSubscriber(broker.host, broker.port, "streetgate/cab-test/cmd/result")
    sub.start()
    try:
        assert _publish(broker.host, broker.port, "streetgate/cab-test/cmd", message)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _t, payload = sub.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            _kid, body = open1(payload, {kid_for(gw): gw})
            return decode_result(body)
        return None
    finally:
        sub.stop()


def test_same_message_is_performed_once_even_across_an_outage_and_a_restart(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"
    section = _commands(state, platform.public_key())
    cmd = _cmd(value=40)
    message = sign_command(cmd, platform)

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state, commands=section) as run:
            await _subscribed(run)
            gw = _gw_key(state)
            first = await _send(mosquitto, cmd, platform, gw)
            assert first is not None and first.status == "done"
            mosquitto.stop()  # the platform missed the result, say
            await asyncio.sleep(0.5)
            mosquitto.start()
            await asyncio.sleep(1.5)
            again = await asyncio.to_thread(_raw_roundtrip, mosquitto, message, gw)
            assert again is not None and (again.status, again.ts) == ("done", first.ts)
            assert _sim(run).writes == 1
        async with running_gateway(SIM, mosquitto, state, commands=section) as run:
            await _subscribed(run)
            gw = _gw_key(state)
            replay = await asyncio.to_thread(_raw_roundtrip, mosquitto, message, gw)
            assert replay is not None and (replay.status, replay.ts) == ("done", first.ts)
            assert _sim(run).writes == 0 and _level(run) == 0
            other = dataclasses.replace(_cmd(value=80), id=cmd.id)
            res = await _send(mosquitto, other, platform, gw)
            assert res is not None and res.reason == "replayed"
            assert _sim(run).writes == 0

    asyncio.run(scenario())
    conn = sqlite3.connect(state / "buffer.db")
    assert conn.execute("SELECT state, result_sent FROM commands WHERE id = ?",
                        (cmd.id,)).fetchall() == [("final", 1)]


def test_results_ride_in_the_signed_batch_stream(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state,
                                   commands=_commands(state, platform.public_key())) as run:
            await _subscribed(run)
            gw = _gw_key(state)
            cmd = _cmd(value=20)
            res = await _send(mosquitto, cmd, platform, gw)
            assert res is not None and res.status == "done"
            found: list[Result] = []
            deadline = time.monotonic() + 15
            while not found and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                for batch in _batches(run):
                    for signed in batch.get(K_RESULTS, []):
                        _kid, body = open1(signed, {kid_for(gw): gw})
                        found.append(decode_result(body))
            assert [(r.id, r.status, r.value) for r in found] == [(cmd.id, "done", 20)]
            await asyncio.sleep(1.0)
            conn = sqlite3.connect(state / "buffer.db")
            assert conn.execute("SELECT batched FROM commands WHERE id = ?",
                                (cmd.id,)).fetchone() == (1,)

    asyncio.run(scenario())


def _batches(run: Run) -> list[dict[int, Any]]:
    import queue  # noqa: PLC0415

    out = []
    while True:
        try:
            _t, payload = run.sub.messages.get_nowait()
        except queue.Empty:
            return out
        res = run.verifier.feed(payload)
        out.append(res.extra)


def test_config_by_command_rolls_back_when_the_uplink_does_not_return(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"
    conf = tmp_path / "gateway.toml"
    section = _commands(state, platform.public_key())

    def text(port: int) -> str:
        return (f'[gateway]\nid = "cab-test"\nstate_dir = "{state}"\n'
                f'[uplink]\nport = {port}\nbatch_linger = "100ms"\nreconnect_min = "100ms"\n'
                f'reconnect_max = "500ms"\n[commands]\nkeys = ["keys/platform.pub"]\n'
                f'accept_config = true\nconfig_rollback = "5s"\n'
                f'[[drivers.sim]]\ninstance = "sim-1"\nlights = 2\ninterval = "50ms"\n')

    good = text(mosquitto.port)
    conf.write_text(good)

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state, commands={
                **section, "accept_config": True, "config_rollback": "5s"}) as run:
            await _subscribed(run)
            run.gateway.config_path = conf
            gw = _gw_key(state)
            bad = await _send(mosquitto, _cmd(None, config=b"[gateway]\nid = 5\n"), platform,
                              gw)
            assert bad is not None and (bad.status, bad.reason) == ("rejected",
                                                                    "invalid-config")
            assert conf.read_text() == good
            broken = text(1).encode()  # nothing listens on port 1
            res = await _send(mosquitto, _cmd(None, config=broken), platform, gw, wait=40)
            assert res is not None and (res.status, res.reason) == ("failed", "rolled-back")
            assert conf.read_text() == good
            assert conf.with_name("gateway.toml.rejected").read_bytes() == broken
            assert run.gateway.cfg.uplink.port == mosquitto.port
            fine = text(mosquitto.port).replace('"100ms"\nreconnect', '"200ms"\nreconnect', 1)
            ok = await _send(mosquitto, _cmd(None, config=fine.encode()), platform, gw,
                             wait=40)
            assert ok is not None and ok.status == "done", ok
            assert conf.read_text() == fine
            assert conf.with_name("gateway.toml.prev").read_text() == good

    asyncio.run(scenario())


def test_a_command_for_a_device_that_is_down_waits_and_is_done_once_it_is_back(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"
    relay = RELAY

    async def scenario() -> None:
        async with _relay_cabinet(mosquitto, state, platform, retry="200ms") as (
                run, sim, writes):
            gw = _gw_key(state)
            await sim.stop()
            assert sim.units[2].read("coil", 0, 1) == [False]
            waiting = _cmd(relay, True, ttl_ms=60_000)
            _m, final, seen = await asyncio.to_thread(
                send_command, waiting, platform, host=mosquitto.host, port=mosquitto.port,
                wait=2.0, gateway_keys={kid_for(gw): gw})
            assert final is None and [r.status for r in seen] == ["accepted"]
            assert waiting.id in run.gateway.status()["commands"]["pending"]
            assert sim.units[2].read("coil", 0, 1) == [False]
            doomed = _cmd(relay, False, ttl_ms=1_500)
            res = await _send(mosquitto, doomed, platform, gw, wait=15)
            assert res is not None and (res.status, res.reason) == ("expired", "expired")
            await sim.start()
            deadline = time.monotonic() + 20
            while sim.units[2].read("coil", 0, 1) != [True] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert sim.units[2].read("coil", 0, 1) == [True]
            await asyncio.sleep(0.5)
            row = sqlite3.connect(state / "buffer.db").execute(
                "SELECT state, result FROM commands WHERE id = ?", (waiting.id,)).fetchone()
            assert row[0] == "final"
            _kid, body = open1(row[1], {kid_for(gw): gw})
            done = decode_result(body)
            assert (done.status, done.value) == ("done", True)

    asyncio.run(scenario())


def test_config_names_every_commands_problem_at_once(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_config  # noqa: PLC0415

    raw = {"gateway": {"id": "cab-1", "state_dir": str(tmp_path)},
           "drivers": {"sim": [{"instance": "sim-1", "lights": 1}]},
           "commands": {"keys": ["keys/p.pub"], "writable": [
               {"point": "sim-1/dev-000/lite"},
               {"point": "sim-1/dev-000/light", "min": 5, "max": 1, "allowed": [1]}],
               "actions": [{"name": "x", "point": "nowhere", "value": 1}]}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, file="gw.toml")
    lines = err.value.lines()
    assert any("writable[1].allowed: expected either allowed or min/max" in x for x in lines)
    assert any("writable[1].max: expected max >= min" in x for x in lines)
    raw["commands"]["writable"] = [{"point": "sim-1/dev-000/lite"}]
    raw["commands"]["actions"] = []
    with pytest.raises(ConfigError) as err:
        parse_config(raw, file="gw.toml")
    assert err.value.lines() == [
        'gw.toml: commands.writable[0].point: no configured driver can write '
        '"sim-1/dev-000/lite"; writable points: sim-1/dev-000/light, sim-1/dev-001/light, '
        'sim-1/dev-002/light, sim-1/dev-003/light']


def test_a_result_lost_in_a_broker_outage_arrives_later_and_the_write_happens_once(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    """The device comes back while the broker is away: the write happens, its result cannot
    be published; after the broker returns the result arrives, and the platform sending the
    same command again (it never saw a result) does not write a second time."""
    from gateway.command_cli import _publish  # noqa: PLC0415
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415

    state = tmp_path / "state"
    relay = RELAY

    async def scenario() -> None:
        cmd = _cmd(relay, True, ttl_ms=60_000)
        message = sign_command(cmd, platform)
        async with _relay_cabinet(mosquitto, state, platform, retry="200ms") as (
                run, sim, writes):
            gw = _gw_key(state)
            await sim.stop()
            assert await asyncio.to_thread(_publish, mosquitto.host, mosquitto.port,
                                           "streetgate/cab-test/cmd", message)
            await asyncio.sleep(1.0)  # accepted, waiting for the device
            mosquitto.stop()
            await sim.start()
            deadline = time.monotonic() + 20
            while sim.units[2].read("coil", 0, 1) != [True] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert sim.units[2].read("coil", 0, 1) == [True]
            await asyncio.sleep(0.5)
            row = sqlite3.connect(state / "buffer.db").execute(
                "SELECT state, result_sent FROM commands WHERE id = ?", (cmd.id,)).fetchone()
            assert row == ("final", 0)  # stored, not yet acknowledged by a broker
            sub = BatchSubscriber(mosquitto.host, mosquitto.port,
                                  "streetgate/cab-test/cmd/result")
            mosquitto.start()
            await asyncio.to_thread(sub.start)
            try:
                got: list[Result] = []
                deadline = time.monotonic() + 20
                while not got and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    while not sub.messages.empty():
                        _t, payload = sub.messages.get()
                        _kid, body = open1(payload, {kid_for(gw): gw})
                        got.append(decode_result(body))
                assert [(r.id, r.status, r.value) for r in got] == [(cmd.id, "done", True)]
            finally:
                sub.stop()
            again = await asyncio.to_thread(_raw_roundtrip, mosquitto, message, gw)
            assert again is not None and (again.status, again.ts) == ("done", got[0].ts)
            relay_writes = [w for w in writes if w.refused is None]
            assert len(relay_writes) == 1, relay_writes

    asyncio.run(scenario())


def test_refusals_are_stored_answered_again_byte_for_byte_and_ride_in_batches(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state,
                                   commands=_commands(state, platform.public_key())) as run:
            await _subscribed(run)
            gw = _gw_key(state)
            refused = [_cmd(value=110 + i) for i in range(70)]  # more than a batch carries
            for cmd in refused:
                res = await asyncio.to_thread(_raw_roundtrip, mosquitto,
                                              sign_command(cmd, platform), gw)
                assert res is not None and res.reason == "out-of-range"
            again = await asyncio.to_thread(_raw_roundtrip, mosquitto,
                                            sign_command(refused[0], platform), gw)
            first = sqlite3.connect(state / "buffer.db").execute(
                "SELECT result FROM commands WHERE id = ?", (refused[0].id,)).fetchone()[0]
            _kid, body = open1(first, {kid_for(gw): gw})
            assert again == decode_result(body)
            ok = await _send(mosquitto, _cmd(value=20), platform, gw)
            assert ok is not None and ok.status == "done"
            deadline = time.monotonic() + 20
            conn = sqlite3.connect(state / "buffer.db")
            while time.monotonic() < deadline:
                left = conn.execute("SELECT count(*) FROM commands WHERE state = 'final'"
                                    " AND (batched = 0 OR result_sent = 0)").fetchone()[0]
                if not left:
                    break
                await asyncio.sleep(0.2)
            assert left == 0, f"{left} results neither batched nor acknowledged"

    asyncio.run(scenario())


def test_the_rate_limit_holds_for_commands_sent_together(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"
    section = _commands(state, platform.public_key())
    section["writable"][0]["min_interval"] = "1m"

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state, commands=section) as run:
            await _subscribed(run)
            gw = _gw_key(state)
            cmds = [_cmd(value=10), _cmd(value=20), _cmd(value=30),
                    _cmd(None, action="lights-off")]
            results = await asyncio.gather(*(_send(mosquitto, c, platform, gw) for c in cmds))
            statuses = sorted((r.status, r.reason) for r in results if r is not None)
            assert len(statuses) == 4
            assert statuses.count(("done", None)) == 1, statuses
            assert statuses.count(("rejected", "rate-limited")) == 3, statuses
            assert _sim(run).writes == 1

    asyncio.run(scenario())


def test_a_config_that_would_lock_the_platform_out_is_refused(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    state = tmp_path / "state"
    conf = tmp_path / "gateway.toml"
    other = load_or_create_signing_key(tmp_path / "other.key")
    write_public(tmp_path / "other.pub", public_key_pem(other.public_key()).encode())
    base = (f'[gateway]\nid = "cab-test"\nstate_dir = "{state}"\n'
            f'[uplink]\nport = {mosquitto.port}\n[commands]\naccept_config = true\n')
    conf.write_text(base + 'keys = ["keys/platform.pub"]\n')

    async def scenario() -> None:
        async with running_gateway(SIM, mosquitto, state, commands={
                **_commands(state, platform.public_key()), "accept_config": True}) as run:
            await _subscribed(run)
            run.gateway.config_path = conf
            gw = _gw_key(state)
            for keys, why in ((f'keys = ["{tmp_path / "other.pub"}"]\n', "do not include"),
                              ('keys = ["keys/missing.pub"]\n', "missing.pub")):
                res = await _send(mosquitto, _cmd(None, config=(base + keys).encode()),
                                  platform, gw)
                assert res is not None and res.reason == "invalid-config", res
                assert why in (res.detail or "")
            assert conf.read_text() == base + 'keys = ["keys/platform.pub"]\n'

    asyncio.run(scenario())


def test_commands_waiting_for_a_device_run_in_the_order_they_were_accepted(
        mosquitto: Mosquitto, tmp_path: Path, platform: Any) -> None:
    from gateway.command_cli import _publish  # noqa: PLC0415

    state = tmp_path / "state"
    relay = RELAY

    async def scenario() -> None:
        async with _relay_cabinet(mosquitto, state, platform, retry="300ms") as (
                run, sim, writes):
            await sim.stop()
            order = [_cmd(relay, v, ttl_ms=60_000) for v in (True, False, True, False)]
            for cmd in order:
                assert await asyncio.to_thread(_publish, mosquitto.host, mosquitto.port,
                                               "streetgate/cab-test/cmd",
                                               sign_command(cmd, platform))
            await asyncio.sleep(2.0)  # every one of them retried a few times meanwhile
            await sim.start()
            conn = sqlite3.connect(state / "buffer.db")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = conn.execute("SELECT count(*) FROM commands WHERE state = 'final'"
                                    ).fetchone()[0]
                if done == len(order):
                    break
                await asyncio.sleep(0.1)
            taken = [bool(w.items[0]) for w in writes if w.refused is None]
            assert taken == [True, False, True, False]
            assert sim.units[2].read("coil", 0, 1) == [False]
            assert run.gateway.status()["commands"]["done"] == 4

    asyncio.run(scenario())
