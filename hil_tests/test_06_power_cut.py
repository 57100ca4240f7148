"""Power cut under load: the gateway is killed (kill -9, or a relay) at random moments while
its devices deliver; every time the buffer opens intact, and in the end every committed
reading reaches the platform exactly once, with no hole in the sequence."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from hil_tests._bench import Bench
from hil_tests.rig import Rig


def test_power_cut_under_load(up: Bench, rig: Rig, report: Callable[[str], None]) -> None:
    obs, power = up.obs, rig.power
    rng = random.Random(20240611)
    timeout = float(rig.recover_timeout)
    t0 = time.monotonic()
    cuts, committed, resent = 0, 0, obs.resent
    while cuts < power.rounds and time.monotonic() - t0 < float(power.budget):
        up.ensure_up()
        base = obs.highest_seq()

        def fresh(base: int = base) -> bool:
            return obs.highest_seq() > base

        obs.wait(fresh, timeout, f"new readings after start {up.daemon.starts}")
        time.sleep(rng.uniform(0.1, 0.8))
        up.power_cut()
        cuts += 1
        high = up.committed_high_water()
        if high is not None:
            committed = max(committed, high)
    up.ensure_up()
    took = obs.wait(lambda: obs.highest_seq() >= committed and not obs.missing(), timeout,
                    f"every committed reading (up to seq {committed}) with no hole")
    assert cuts >= 1, f"no cut within the budget of {float(power.budget):g}s"
    seqs = [s.seq for s in obs.seen]
    assert len(seqs) == len(set(seqs)), "a reading was passed on twice"
    assert not obs.rejected, f"batches rejected: {obs.rejected[0]}"
    how = "kill -9" if power.method == "sigkill" else "power cut by command"
    budget = f" (of {power.rounds}: budget spent)" if cuts < power.rounds else ""
    report(f"{cuts} x {how} under load{budget}: buffer intact every time, every committed "
           f"reading (up to seq {committed}) delivered once, no hole (caught up in {took:.1f}s; "
           f"{obs.resent - resent} resent batch(es) dropped as such)")
