"""Broker outage and recovery: with the uplink cut, every device's readings pile up in the
buffer; once it is back they all arrive, signed, in order, with no hole and no duplicate."""

from __future__ import annotations

import time
from collections.abc import Callable

from hil_tests._bench import Bench
from hil_tests.rig import Rig


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_broker_outage_and_recovery(up: Bench, rig: Rig, report: Callable[[str], None]) -> None:
    obs, net = up.obs, rig.network
    timeout = float(rig.recover_timeout)
    devices = {f"{d.bus}/{d.name}" for d in rig.devices}

    def device(point: str) -> str:
        return point.rsplit("/", 1)[0]

    start, resent = now_ms(), obs.resent
    obs.wait(lambda: any(s.reading.ts >= start for s in obs.seen), timeout, "readings before")
    cut = now_ms()
    up.network(up=False)
    try:
        time.sleep(float(net.outage))
    finally:
        restored = now_ms()
        up.network(up=True)

    def during() -> list[str]:
        return [s.reading.point for s in obs.seen if cut <= s.reading.ts < restored]

    caught_up = obs.wait(lambda: devices <= {device(p) for p in during()} and any(
        s.reading.ts >= restored for s in obs.seen) and not obs.missing(), timeout,
        "every device's readings from the outage, with no hole in the sequence")
    seqs = [s.seq for s in obs.seen]
    assert len(seqs) == len(set(seqs)), "a reading was passed on twice"
    assert not obs.rejected, f"batches rejected: {obs.rejected[0]}"
    how = "broker stopped" if net.method == "broker" else "network cut by command"
    report(f"{how} for {float(net.outage):g}s: {len(during())} readings stamped during the "
           f"outage delivered after it, caught up {caught_up:.1f}s after reconnecting, "
           f"no hole, no duplicate ({obs.resent - resent} resent batch(es) dropped as such)")
