"""Writes to a Modbus device by signed command: a holding register and a coil are written by
the running gateway (commands from the platform, as in service), read back by the driver and
reported in each command's signed result, then seen by the platform in the gateway's readings;
the values from before are written back at the end.

A rig whose gateway runs on a remote board skips this: its config would have to list the
bench's platform command key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping

import pytest

from drivers.api import Quality, Value
from gateway.command import Command
from gateway.command_cli import send_command
from gateway.cose import kid_for
from hil_tests._bench import GATEWAY_ID, Bench
from hil_tests.rig import Device, Rig
from provisioning.keys import load_or_create_signing_key


def _other(value: Value) -> Value:
    """A value different from ``value`` that any coil or dimming register takes."""
    if isinstance(value, bool):
        return not value
    return 38 if value == 37 else 37


def _write(bench: Bench, dev: Device, values: Mapping[str, Value],
           timeout: float) -> dict[str, Value]:
    """Send one signed command per value; return what each result says was read back."""
    gateway = load_or_create_signing_key(bench.state / "keys" / "signing.key").public_key()
    out: dict[str, Value] = {}
    for point, value in values.items():
        now = time.time_ns() // 1_000_000
        cmd = Command(GATEWAY_ID if bench.sims is not None else _gateway_id(bench),
                      uuid.uuid4().hex, now, now + round(timeout * 1000), point=point,
                      value=value)
        _m, final, _seen = send_command(cmd, bench.platform_key, host=bench.broker.host,
                                        port=bench.broker.port, wait=timeout,
                                        gateway_keys={kid_for(gateway): gateway})
        assert final is not None, f"no result for {point} = {value!r} within {timeout:.0f}s"
        assert final.status == "done", (
            f"{point} = {value!r}: {final.status} {final.reason} {final.detail}")
        out[point] = final.value
    return out


def _gateway_id(bench: Bench) -> str:
    from gateway.config import load_config  # noqa: PLC0415

    return load_config(bench.daemon.config).gateway.id  # type: ignore[union-attr]


def test_modbus_write_and_read_back(write_device: Device, up: Bench, rig: Rig,
                                    report: Callable[[str], None]) -> None:
    if rig.remote:
        pytest.skip("the gateway on the board would need the bench's platform command key in "
                    "its [commands] keys")
    obs, dev = up.obs, write_device
    points = [f"{dev.bus}/{dev.name}/{p}" for p in dev.write]
    timeout = float(rig.recover_timeout)

    def latest(point: str, since: float) -> Value:
        good = [r for r in obs.of(point, since) if r.quality is Quality.GOOD]
        return good[-1].value if good else None

    start = time.monotonic()
    obs.wait(lambda: all(latest(p, start) is not None for p in points), timeout,
             f"good readings of {', '.join(dev.write)} before writing")
    before = {p: latest(p, start) for p in points}
    wanted = {p: _other(v) for p, v in before.items()}
    try:
        assert _write(up, dev, wanted, timeout) == wanted
        restarted = time.monotonic()
        seen = obs.wait(lambda: all(latest(p, restarted) == wanted[p] for p in points),
                        timeout, f"the written values of {', '.join(dev.write)} in the "
                                 "gateway's readings")
    finally:
        restored = _write(up, dev, before, timeout)
    assert restored == before
    shown = ", ".join(f"{p.rsplit('/', 1)[1]} {before[p]!r} -> {wanted[p]!r}" for p in points)
    report(f"wrote {shown} by signed command: read back, and in the gateway's readings "
           f"{seen:.1f}s after the write; restored")
