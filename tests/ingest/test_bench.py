"""``streetgate ingest bench`` with a tiny fleet, and ``streetgate demo --ingest``: every
reading produced is stored exactly once, through a reconnect storm and a broker outage."""

from __future__ import annotations

import json
import subprocess
import sys

from ingest.bench import BenchOptions, format_table, run_bench

REPORT_FIELDS = {
    "database", "workers", "gateways", "keys", "offered_readings_per_s",
    "stored_readings_per_s", "peak_stored_readings_per_s_5s", "lag_p50_ms", "lag_p99_ms",
    "lag_p99_all_ms", "produced", "stored", "exact", "duplicates_refused", "storm",
}


def test_a_tiny_fleet_through_a_reconnect_storm_is_stored_exactly() -> None:
    result = run_bench(BenchOptions(gateways=5, keys=20, rate=500, seconds=4.0, drain=30.0))
    assert set(result) >= REPORT_FIELDS
    assert result["produced"] == 5 * 4 * 100  # 5 gateways, 4 batches of 100 readings
    assert result["stored"] == result["produced"]
    assert result["exact"] is True
    assert result["holes"] == 0
    storm = result["storm"]
    assert storm["gateways_disconnected"] == 5
    assert storm["all_back_within_s"] is not None
    assert storm["all_back_within_s"] < 5
    assert storm["unacked_at_end"] == 0
    dupes = result["duplicates_refused"]
    # A batch sent again after the storm is refused when its first copy had arrived.
    assert dupes["replayed_batches"] + dupes["duplicate_batches"] <= storm["batches_resent"]
    assert result["lag_p50_ms"] is not None
    assert result["lag_p50_ms"] <= result["lag_p99_ms"]
    assert sum(int(w["stored"]) for w in result["worker_stats"]) == result["stored"]
    table = format_table([result])
    assert table.splitlines()[2].startswith("| sqlite | 1 | 5 | 20 |")


def test_demo_with_ingest_stores_every_reading_without_holes() -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "demo", "--ingest", "--seconds",
                           "8", "--outage", "2", "--json"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    (epoch,) = summary["ingest"]["epochs"]
    assert summary["produced"] > 500
    assert epoch["received"] == summary["produced"]
    assert (epoch["holes"], epoch["missing"], epoch["gaps"]) == ([], 0, 0)
    assert epoch["seqs"] == [1, summary["produced"]]
