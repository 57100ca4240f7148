"""``streetgate ingest bench``: a simulated fleet against a private broker and database.

One run: a private mosquitto (persistent, so a restart keeps the workers' sessions), a
database (a SQLite file, a fresh database in a private PostgreSQL cluster, or ``--db``), the
fleet's keys registered in it, W ``streetgate ingest run`` workers on one shared
subscription, and N gateways in a few fleet processes (:mod:`ingest._bench_fleet`) publishing
pre-signed batches at the configured total rate. Partway through comes the reconnect storm:
every gateway's connection drops at once (or, with ``storm="broker"``, the broker restarts
and the workers reconnect too); the gateways come back within a few seconds and send again
what was not acknowledged.

The report compares what the fleet published with what the database holds (per gateway,
seqs 1..n exactly once), and takes the end-to-end lag of every batch from the moment its
gateway first published it to ``batches.committed_ms`` (stamped in the transaction that
stores it, just before COMMIT).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.batch import MAX_READINGS
from gateway.broker import Mosquitto
from ingest._bench_fleet import FleetSpec, batches_per_gateway, fleet_key, gateway_name, run_fleet
from ingest._db import open_database
from ingest.store import IngestStore

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from ingest._db import Database
    from ingest._pgcluster import Postgres

__all__ = ["BenchOptions", "BenchSetupError", "format_table", "run_bench", "run_matrix"]

#: The broker lets a worker hold as many unacknowledged messages as it groups per
#: transaction (mosquitto's default, 20 in flight per client, would cap every group at 20).
_BROKER_EXTRA = "max_inflight_messages 0\nset_tcp_nodelay true\n"
#: Durable PostgreSQL (fsync and synchronous commit as distributed), with room for WAL.
PG_SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
_GATEWAYS_PER_PROC = 250
_PREFIX = "bench"


class BenchSetupError(RuntimeError):
    """Something the bench needs would not start (a worker, the fleet)."""


@dataclass(frozen=True)
class BenchOptions:
    database: str = "sqlite"  # sqlite or postgresql: a private one
    db_url: str | None = None  # an existing database instead
    workers: int = 1
    gateways: int = 200
    keys: int = 1000
    rate: int = 20_000  # readings/s, the whole fleet
    seconds: float = 20.0  # batches fall due for this long
    interval: float = 1.0  # seconds between one gateway's batches
    #: At storm_at x seconds: "gateways" (every gateway connection drops at once), "broker"
    #: (the broker restarts: gateways and workers reconnect), or "none".
    storm: str = "gateways"
    storm_at: float = 0.6
    group_size: int = 200  # the workers' messages per transaction
    drain: float = 60.0  # after the last batch fell due: wait this long at most for the rest
    fleet_procs: int = 0  # 0: one per 250 gateways, at least 2, at most 4


def _shape(o: BenchOptions) -> tuple[int, float]:
    """Readings per batch (a whole number of 10-point cycles) and the batch interval that
    give the total rate."""
    per_batch = o.rate / o.gateways * o.interval
    if per_batch >= 10:  # points per gateway
        b = min(MAX_READINGS // 10 * 10, max(10, round(per_batch / 10) * 10))
    else:
        b = max(1, round(per_batch))
    return b, b * o.gateways / o.rate


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class _Run:
    """One bench run: setup, play, check, tear down."""

    def __init__(self, o: BenchOptions, work: Path, pg: Postgres | None,
                 say: Callable[[str], None]) -> None:
        self.o = o
        self.work = work
        self.pg = pg
        self.say = say
        self.run_id = secrets.token_hex(3)
        self.batch_readings, self.interval = _shape(o)
        self.broker = Mosquitto(work / "broker", persistence=True, extra=_BROKER_EXTRA)
        self.workers: list[subprocess.Popen[str]] = []
        self.fleets: list[tuple[Any, Connection]] = []
        self.storm_ms = 0
        self.url = ""

    # -- setup -------------------------------------------------------------------------------
    def _database_url(self) -> str:
        if self.o.db_url:
            return self.o.db_url
        if self.o.database == "sqlite":
            return f"sqlite:///{self.work / 'ingest.db'}"
        assert self.pg is not None  # noqa: S101 - run_matrix starts it
        return self.pg.create_database()

    def _spawn_fleets(self) -> None:
        """Fleet processes first, forked before this process holds threads or connections."""
        o = self.o
        procs = o.fleet_procs or min(4, max(2, math.ceil(o.gateways / _GATEWAYS_PER_PROC)))
        procs = min(procs, o.gateways)
        base = FleetSpec(run_id=self.run_id, host="127.0.0.1", port=self.broker.port,
                         prefix=_PREFIX, gateways=o.gateways, mine=(), keys=o.keys,
                         epoch=int(time.time()), batch_readings=self.batch_readings,
                         interval=self.interval, seconds=o.seconds,
                         base_ms=time.time_ns() // 1_000_000, drain=o.drain,
                         drop_at=o.storm_at * o.seconds if o.storm == "gateways" else 0.0)
        ctx = multiprocessing.get_context("fork")
        for p in range(procs):
            parent, child = ctx.Pipe()
            spec = replace(base, mine=tuple(range(p, o.gateways, procs)))
            proc = ctx.Process(target=run_fleet, args=(spec, child), daemon=True,
                               name=f"streetgate-bench-fleet-{p}")
            proc.start()
            child.close()
            self.fleets.append((proc, parent))

    def _register_keys(self, db: Database) -> None:
        o = self.o
        keys = [(fleet_key(self.run_id, j).public_key(), gateway_name(self.run_id, j % o.gateways))
                for j in range(o.keys)]
        IngestStore(db).add_keys(keys)

    def _start_worker(self, i: int) -> subprocess.Popen[str]:
        log = (self.work / f"worker-{i}.log").open("w")
        proc = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "gateway", "--log-level", "warning", "ingest", "run",
             "--db", self.url, "--broker", f"127.0.0.1:{self.broker.port}", "--prefix", _PREFIX,
             "--group", "bench", "--client-id", f"bench-ingest-{self.run_id}-{i}",
             "--group-size", str(self.o.group_size)],
            stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        return proc

    def _wait_ready(self, proc: subprocess.Popen[str], i: int) -> None:
        assert proc.stdout is not None  # noqa: S101 - piped above
        ready, _w, _x = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if "ready" not in line:
            raise BenchSetupError(f"ingest worker {i} did not start: "
                                  f"{(self.work / f'worker-{i}.log').read_text()[-2000:]}")

    def _recv(self, conn: Connection, want: str, timeout: float) -> dict[str, Any]:
        if not conn.poll(timeout):
            raise BenchSetupError(f"a fleet process sent no {want!r} within {timeout:.0f}s")
        kind, data = conn.recv()
        if kind != want:
            raise BenchSetupError(f"a fleet process sent {kind!r}, expected {want!r}")
        return dict(data)

    # -- the run -----------------------------------------------------------------------------
    def play(self) -> dict[str, Any]:
        o = self.o
        self.broker.start()
        self._spawn_fleets()
        self.url = self._database_url()
        db = open_database(self.url)
        try:
            t = time.monotonic()
            self._register_keys(db)
            keys_s = time.monotonic() - t
            self.say(f"{o.keys} keys registered in {keys_s:.1f}s; starting {o.workers} "
                     f"worker(s); {o.gateways} gateways encode {self.batch_readings} readings "
                     f"x {batches_per_gateway(self._spec_view())} batches each")
            self.workers = [self._start_worker(i) for i in range(o.workers)]
            for i, w in enumerate(self.workers):
                self._wait_ready(w, i)
            ready = [self._recv(c, "ready", 600) for _p, c in self.fleets]
            start = time.time() + 1.5
            for _p, c in self.fleets:
                c.send(("start", start))
            self._storm(start)
            done = [self._recv(c, "done", o.seconds + o.drain + 60) for _p, c in self.fleets]
            fleet = self._merge(done)
            self.storm_ms = self.storm_ms or fleet["dropped_ms"]
            self._wait_stored(db, fleet["produced"])
            stats = self._stop_workers()
            result = self._report(db, fleet, stats)
            result["setup"] = {"keys_s": round(keys_s, 2),
                               "encode_s": max(r["encode_s"] for r in ready)}
            return result
        finally:
            db.close()

    def _spec_view(self) -> FleetSpec:
        return FleetSpec(self.run_id, "", 0, _PREFIX, self.o.gateways, (), self.o.keys, 0,
                         self.batch_readings, self.interval, self.o.seconds, 0, 0.0)

    def _storm(self, start: float) -> None:
        """A ``broker`` storm: restart the broker partway (for a ``gateways`` storm the fleet
        drops its own connections); then wait out the run."""
        end = start + self.o.seconds
        if self.o.storm == "broker":
            time.sleep(max(0.0, start + self.o.storm_at * self.o.seconds - time.time()))
            self.say("reconnect storm: restarting the broker")
            self.storm_ms = time.time_ns() // 1_000_000
            self.broker.restart()
        time.sleep(max(0.0, end - time.time()))

    def _merge(self, done: list[dict[str, Any]]) -> dict[str, Any]:
        per: dict[str, Any] = {}
        for d in done:
            per.update(d["gateways"])
        return {"per": per, "produced": sum(g["readings"] for g in per.values()),
                "published": sum(g["published"] for g in per.values()),
                "unacked": sum(g["unacked"] for g in per.values()),
                "resent": sum(g["resent"] for g in per.values()),
                "disconnected": sum(1 for g in per.values() if g["disconnects"]),
                "reconnected_ms": max((g["reconnected_ms"] for g in per.values()), default=0),
                "dropped_ms": min((d["dropped_ms"] for d in done if d["dropped_ms"]),
                                  default=0),
                "connect_failures": sum(d["connect_failures"] for d in done)}

    def _range(self) -> tuple[str, str]:
        lo = f"bench-{self.run_id}-"
        return lo, lo + "~"

    def _wait_stored(self, db: Database, produced: int) -> int:
        deadline = time.monotonic() + self.o.drain
        got = -1
        while time.monotonic() < deadline:
            with db.transaction() as tx:
                row = tx.one("SELECT SUM(received) FROM streams WHERE gateway_id >= ? AND "
                             "gateway_id < ?", self._range())
            got = int(row[0] or 0) if row else 0
            if got >= produced:
                break
            time.sleep(0.25)
        return got

    def _stop_workers(self) -> list[dict[str, Any]]:
        import json  # noqa: PLC0415

        stats = []
        for w in self.workers:
            w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                out, _err = w.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                out, _err = w.communicate()
            lines = [x for x in out.splitlines() if x.startswith("{")]
            stats.append(json.loads(lines[-1])["ingest"] if lines else {})
        self.workers = []
        return stats

    def close(self) -> None:
        for w in self.workers:
            w.kill()
            w.communicate()
        for proc, conn in self.fleets:
            conn.close()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.broker.stop()

    # -- the report --------------------------------------------------------------------------
    def _report(self, db: Database, fleet: dict[str, Any],
                stats: list[dict[str, Any]]) -> dict[str, Any]:
        rng = self._range()
        with db.transaction() as tx:
            rows = tx.all("SELECT gateway_id, COUNT(*), MIN(seq), MAX(seq) FROM readings WHERE "
                          "gateway_id >= ? AND gateway_id < ? GROUP BY gateway_id", rng)
            batches = tx.all("SELECT gateway_id, batch_seq, committed_ms, readings, duplicates, "
                             "status FROM batches WHERE gateway_id >= ? AND gateway_id < ?", rng)
            refused = tx.all("SELECT status, COUNT(*) FROM rejections WHERE gateway_id >= ? AND "
                             "gateway_id < ? GROUP BY status", rng)
            holes = tx.one("SELECT COUNT(*) FROM streams WHERE gateway_id >= ? AND "
                           "gateway_id < ? AND holes <> '[]'", rng)
        stored = sum(int(r[1]) for r in rows)
        by_gw = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}
        exact = all(by_gw.get(gw, (0, 1, 0)) == (g["readings"], 1, g["readings"])
                    if g["readings"] else gw not in by_gw for gw, g in fleet["per"].items())
        return {
            "database": "sqlite" if self.url.startswith("sqlite") else "postgresql",
            "workers": self.o.workers, "gateways": self.o.gateways, "keys": self.o.keys,
            "readings_per_batch": self.batch_readings, "batch_interval_s": round(self.interval, 3),
            "rate_target": self.o.rate, "seconds": self.o.seconds,
            **self._throughput(fleet, batches, stored),
            "produced": fleet["produced"], "stored": stored,
            "exact": exact and stored == fleet["produced"] and fleet["unacked"] == 0,
            "holes": int(holes[0]) if holes else 0,
            "batches_published": fleet["published"],
            "duplicates_refused": self._duplicates(batches, refused),
            "refused_other": {str(s): int(n) for s, n in refused if s != "replay"},
            "storm": self._storm_report(fleet),
            "worker_stats": stats,
        }

    def _throughput(self, fleet: dict[str, Any], batches: list[tuple[Any, ...]],
                    stored: int) -> dict[str, Any]:
        sent = {gw: g["sent_ms"] for gw, g in fleet["per"].items()}
        lags, steady, commits = [], [], []
        for gw, bseq, committed, n, _d, _s in batches:
            first = sent.get(gw, [])[int(bseq) - 1] if int(bseq) <= len(sent.get(gw, [])) else 0
            commits.append((int(committed), int(n)))
            if first:
                lags.append(int(committed) - first)
                if not self.storm_ms or first < self.storm_ms:
                    steady.append(int(committed) - first)
        firsts = [t for s in sent.values() for t in s if t]
        span = (max(c for c, _n in commits) - min(firsts)) / 1000 if commits and firsts else 0
        offered = (max(firsts) - min(firsts)) / 1000 + self.interval if firsts else 0
        return {
            "offered_readings_per_s": round(fleet["produced"] / offered) if offered else None,
            "stored_readings_per_s": round(stored / span) if span else None,
            "peak_stored_readings_per_s_5s": _peak(commits, 5000),
            "lag_p50_ms": _percentile(steady, 0.50), "lag_p99_ms": _percentile(steady, 0.99),
            "lag_p99_all_ms": _percentile(lags, 0.99), "lag_max_ms": max(lags, default=None),
        }

    @staticmethod
    def _duplicates(batches: list[tuple[Any, ...]], refused: list[tuple[Any, ...]]
                    ) -> dict[str, int]:
        return {"replayed_batches": sum(int(n) for s, n in refused if s == "replay"),
                "duplicate_batches": sum(1 for b in batches if b[5] == "duplicate"),
                "duplicate_readings_in_new_batches": sum(int(b[4]) for b in batches)}

    def _storm_report(self, fleet: dict[str, Any]) -> dict[str, Any] | None:
        if not self.storm_ms:
            return None
        back = fleet["reconnected_ms"]
        return {"kind": self.o.storm, "gateways_disconnected": fleet["disconnected"],
                "all_back_within_s": round((back - self.storm_ms) / 1000, 2) if back else None,
                "batches_resent": fleet["resent"], "unacked_at_end": fleet["unacked"]}


def _peak(commits: list[tuple[int, int]], window_ms: int) -> int | None:
    """The most readings committed in any ``window_ms`` window, per second."""
    if not commits:
        return None
    commits.sort()
    best = total = 0
    j = 0
    for c, n in commits:
        total += n
        while commits[j][0] <= c - window_ms:
            total -= commits[j][1]
            j += 1
        best = max(best, total)
    return round(best * 1000 / window_ms)


def run_bench(o: BenchOptions, *, pg: Postgres | None = None,
              say: Callable[[str], None] = lambda _s: None) -> dict[str, Any]:
    """One run (see the module docstring); ``pg``: the private cluster for ``postgresql``."""
    with tempfile.TemporaryDirectory(prefix="streetgate-bench-") as tmp:
        run = _Run(o, Path(tmp), pg, say)
        try:
            result = run.play()
        finally:
            run.close()
    result["options"] = asdict(o)
    return result


def run_matrix(base: BenchOptions, databases: list[str], workers: list[int],
               say: Callable[[str], None] = lambda _s: None) -> list[dict[str, Any]]:
    """One run per database and worker count; one private PostgreSQL cluster for them all."""
    results: list[dict[str, Any]] = []
    pg: Postgres | None = None
    try:
        for database in databases:
            if database == "postgresql" and not base.db_url and pg is None:
                from ingest._pgcluster import Postgres  # noqa: PLC0415

                pg = Postgres(settings=PG_SETTINGS)
                pg.start()
            for w in workers:
                o = replace(base, database=database, workers=w)
                say(f"--- {database}, {w} worker(s) ---")
                results.append(run_bench(o, pg=pg, say=say))
    finally:
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.close()
    return results


_COLUMNS = [("database", "database"), ("workers", "workers"), ("gateways", "gateways"),
            ("keys", "keys"), ("offered/s", "offered_readings_per_s"),
            ("stored/s", "stored_readings_per_s"), ("peak 5 s/s", "peak_stored_readings_per_s_5s"),
            ("lag p50 ms", "lag_p50_ms"), ("lag p99 ms", "lag_p99_ms"),
            ("p99 all ms", "lag_p99_all_ms"), ("produced", "produced"), ("stored", "stored"),
            ("exact", "exact")]


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, one row per run, duplicates and storm beside."""
    head = [h for h, _k in _COLUMNS] + ["dup. refused", "storm back in s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [f"{r[k]:,}" if isinstance(r[k], int) and not isinstance(r[k], bool) else
                 str(r[k]) for _h, k in _COLUMNS]
        d = r["duplicates_refused"]
        cells.append(str(d["replayed_batches"] + d["duplicate_batches"]))
        cells.append(str(r["storm"]["all_back_within_s"]) if r["storm"] else "no storm")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
