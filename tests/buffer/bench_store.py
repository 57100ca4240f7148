"""Store micro-benchmark: commit, lease+ack and bytes per reading for one buffer file.

Run: ``python -m tests.buffer.bench_store [--rows 200000] [--points 100] [--group 2000]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from buffer import Store
from drivers.api import Quality, Reading

BASE_TS = 1_700_000_000_000


def _written() -> int | None:
    """Bytes this process has caused to be written to storage (Linux /proc/self/io)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    fields = dict(line.split(": ") for line in text.splitlines())
    return int(fields["write_bytes"])


def _readings(rows: int, points: int) -> list[Reading]:
    names = [f"cab-0042/meter-{p // 10:02d}/ch{p % 10}" for p in range(points)]
    return [Reading(names[i % points], BASE_TS + (i // points) * 1000, 230.0 + (i % 997) / 10,
                    Quality.GOOD, "V") for i in range(rows)]


def bench(path: Path, rows: int, points: int, group: int, lease_size: int,
          synchronous: str) -> dict[str, str | float | None]:
    data = _readings(rows, points)
    store = Store(path, max_bytes=1 << 30, synchronous=synchronous)  # type: ignore[arg-type]
    w0 = _written()
    t0 = time.perf_counter()
    for i in range(0, rows, group):
        store.append(data[i:i + group])
        store.commit()
    t1 = time.perf_counter()
    stats = store.stats()
    w1 = _written()
    t2 = time.perf_counter()
    while (lease := store.lease(lease_size)) is not None:
        store.ack(lease)
    t3 = time.perf_counter()
    store.close()
    return {
        "rows": rows, "points": points, "group_commit_rows": group, "synchronous": synchronous,
        "commit_rows_per_s": round(rows / (t1 - t0)),
        "lease_ack_rows_per_s": round(rows / (t3 - t2)),
        "db_bytes_per_reading": round(stats.used_bytes / rows, 1),
        "file_bytes_per_reading": round(stats.file_bytes / rows, 1),
        "written_bytes_per_reading": (round((w1 - w0) / rows, 1)
                                      if w0 is not None and w1 is not None else None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--group", type=int, default=2000, help="readings per group commit")
    parser.add_argument("--lease", type=int, default=5000, help="readings per lease")
    parser.add_argument("--synchronous", default="normal", choices=["off", "normal", "full"])
    parser.add_argument("--dir", help="where to put the file (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = bench(Path(tmp) / "bench.db", args.rows, args.points, args.group, args.lease,
                       args.synchronous)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
