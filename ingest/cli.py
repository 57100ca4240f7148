"""``streetgate ingest``: run a worker, manage the trusted keys, query what is stored."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ingest._db import DatabaseError, open_database

__all__ = ["main"]

_DB_HELP = "sqlite:///PATH (default: %(default)s) or postgresql://USER@HOST:PORT/DB"


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default="sqlite:///ingest.db", help=_DB_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streetgate ingest",
                                     description="verified batches into a database, once")
    sub = parser.add_subparsers(dest="ingest_command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="subscribe, verify, store; ack each batch after COMMIT")
    _db_arg(p)
    p.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT")
    p.add_argument("--prefix", default="streetgate", help="topic prefix (<prefix>/+/batch)")
    p.add_argument("--group", help="share the load: $share/GROUP/<prefix>/+/batch (MQTT 5)")
    p.add_argument("--client-id", default="",
                   help="a stable id per worker keeps its broker session across restarts")
    p.add_argument("--username", default="")
    p.add_argument("--password", default="")
    p.add_argument("--keys", type=Path, metavar="DIR",
                   help="the registrar's key directory, imported now and whenever it changes")
    p.add_argument("--key", action="append", default=[], metavar="[GATEWAY=]PUB.pem",
                   help="trust this gateway public key too (repeatable)")
    p.add_argument("--group-size", type=int, default=200, help="messages per transaction")
    p.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    p.add_argument("--idle-exit", type=float, default=0.0,
                   help="stop after this many seconds without a message (0: never)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("keys", help="the gateway keys the ingest trusts")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    kp = ksub.add_parser("add", help="trust public keys: [GATEWAY=]PUB.pem ...")
    _db_arg(kp)
    kp.add_argument("keys", nargs="+", metavar="[GATEWAY=]PUB.pem")
    kp.set_defaults(func=cmd_keys_add)
    kp = ksub.add_parser("import", help="import the registrar's key directory")
    _db_arg(kp)
    kp.add_argument("dir", type=Path)
    kp.set_defaults(func=cmd_keys_import)
    kp = ksub.add_parser("revoke", help="refuse every batch signed by this key from now on")
    _db_arg(kp)
    kp.add_argument("kid", help="16 hex digits")
    kp.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("query", help="answers as JSON (and SenML for readings)")
    _db_arg(p)
    qsub = p.add_subparsers(dest="query_command", required=True)
    qp = qsub.add_parser("latest", help="the latest value of every point")
    qp.add_argument("--gateway")
    qp.set_defaults(func=cmd_latest)
    qp = qsub.add_parser("range", help="a point's readings in a time range")
    qp.add_argument("--gateway", required=True)
    qp.add_argument("--point", required=True)
    qp.add_argument("--from", dest="start", default="0", help="ms since the epoch or ISO 8601")
    qp.add_argument("--to", dest="end", default=str(2**62), help="exclusive; as --from")
    qp.add_argument("--senml", action="store_true", help="one SenML pack (RFC 8428)")
    qp.set_defaults(func=cmd_range)
    qp = qsub.add_parser("report", help="a gateway's completeness, per epoch")
    qp.add_argument("--gateway", required=True)
    qp.set_defaults(func=cmd_report)
    _bench_parser(sub)
    return parser


def _bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="a simulated fleet against a private broker and database")
    p.add_argument("--database", default="sqlite",
                   help="sqlite, postgresql (a private cluster), or both: sqlite,postgresql")
    p.add_argument("--db", help="an existing database instead (its gateways are bench-*)")
    p.add_argument("--workers", default="1", help="ingest workers; a list runs each: 1,2")
    p.add_argument("--gateways", type=int, default=200, help="connected at once")
    p.add_argument("--keys", type=int, default=1000,
                   help="gateway keys registered (each gateway signs with its own in turn)")
    p.add_argument("--rate", type=int, default=20_000, help="readings/s, the whole fleet")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the fleet sends")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between one gateway's batches")
    p.add_argument("--storm", choices=["gateways", "broker", "none"], default="gateways",
                   help="midway, every gateway's connection drops at once (default), or the "
                        "broker restarts (gateways and workers reconnect)")
    p.add_argument("--group-size", type=int, default=200, help="messages per transaction")
    p.add_argument("--drain", type=float, default=60.0,
                   help="seconds to wait for the rest once the fleet stopped")
    p.add_argument("--json", action="store_true", help="the results as JSON")
    p.set_defaults(func=cmd_bench)


def _ms(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    when = datetime.fromisoformat(text)  # Python 3.11 reads a trailing Z
    if when.tzinfo is None:
        raise ValueError(f"{text!r}: give a time zone (Z or +HH:MM)")
    return int(when.timestamp() * 1000)


def _add_keys(store: Any, specs: list[str]) -> None:
    from provisioning.keys import load_public_key  # noqa: PLC0415

    for spec in specs:
        gateway, sep, file = spec.partition("=")
        if not sep or Path(spec).exists():
            gateway, file = "", spec
        kid = store.add_key(load_public_key(Path(file)), gateway or None)
        print(f"trusted {kid}" + (f" for {gateway}" if gateway else " for any gateway"),
              file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from ingest.service import IngestWorker, WorkerOptions  # noqa: PLC0415

    host, _, port = args.broker.rpartition(":")
    db = open_database(args.db)
    opts = WorkerOptions(host=host or "127.0.0.1", port=int(port), prefix=args.prefix,
                         group=args.group, client_id=args.client_id, username=args.username,
                         password=args.password, group_size=args.group_size,
                         keys_dir=args.keys)
    worker = IngestWorker(db, opts)
    _add_keys(worker.store, args.key)
    signal.signal(signal.SIGTERM, lambda *_a: worker.stop())
    worker.start()
    print(json.dumps({"ingest": "ready"}), flush=True)
    try:
        stats = worker.run(max_messages=args.count, idle_exit=args.idle_exit)
    finally:
        worker.close()
        db.close()
    print(json.dumps({"ingest": stats.__dict__}), flush=True)
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    from ingest.store import IngestStore  # noqa: PLC0415

    _add_keys(IngestStore(open_database(args.db)), args.keys)
    return 0


def cmd_keys_import(args: argparse.Namespace) -> int:
    from ingest.store import IngestStore  # noqa: PLC0415

    n = IngestStore(open_database(args.db)).import_key_directory(args.dir)
    print(f"imported {n} key(s) from {args.dir}", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from ingest.store import IngestStore  # noqa: PLC0415

    if not IngestStore(open_database(args.db)).revoke_key(args.kid.lower()):
        print(f"streetgate ingest: no key {args.kid}", file=sys.stderr)
        return 1
    return 0


def cmd_latest(args: argparse.Namespace) -> int:
    from ingest.query import latest  # noqa: PLC0415

    print(json.dumps(latest(open_database(args.db), args.gateway), allow_nan=False,
                     default=str))
    return 0


def cmd_range(args: argparse.Namespace) -> int:
    from ingest.query import readings, readings_range  # noqa: PLC0415

    db = open_database(args.db)
    start, end = _ms(args.start), _ms(args.end)
    if args.senml:
        from ingest.senml import senml_json  # noqa: PLC0415

        print(senml_json(args.gateway, readings_range(db, args.gateway, args.point, start, end)))
    else:
        print(json.dumps(readings(db, args.gateway, args.point, start, end), default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ingest.query import completeness  # noqa: PLC0415

    print(json.dumps(completeness(open_database(args.db), args.gateway)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ingest.bench import BenchOptions, format_table, run_matrix  # noqa: PLC0415

    databases = [d.strip() for d in args.database.split(",") if d.strip()]
    if args.db:
        databases = ["postgresql" if args.db.startswith("postgres") else "sqlite"]
    if not set(databases) <= {"sqlite", "postgresql"}:
        raise ValueError(f"--database {args.database!r}: expected sqlite, postgresql or both")
    if args.gateways < 1 or args.keys < args.gateways or args.rate < 1:
        raise ValueError("need --gateways >= 1, --keys >= --gateways and --rate >= 1")
    workers = [int(w) for w in args.workers.split(",")]
    opts = BenchOptions(db_url=args.db, gateways=args.gateways, keys=args.keys,
                        rate=args.rate, seconds=args.seconds, interval=args.interval,
                        storm=args.storm, group_size=args.group_size, drain=args.drain)
    from gateway.broker import BrokerError  # noqa: PLC0415
    from ingest._pgcluster import PostgresError  # noqa: PLC0415
    from ingest.bench import BenchSetupError  # noqa: PLC0415

    results = []
    try:
        for database in databases:
            # SQLite takes one writer at a time: one worker.
            counts = [1] if database == "sqlite" and not args.db else workers
            results += run_matrix(opts, [database], counts, say=lambda s: print(
                f"bench: {s}", file=sys.stderr, flush=True))
    except (BrokerError, PostgresError, BenchSetupError) as exc:
        print(f"streetgate ingest bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
    else:
        print(format_table(results))
    return 0 if all(r["exact"] for r in results) else 1


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from provisioning.keys import KeyFileError  # noqa: PLC0415

    try:
        return int(args.func(args))
    except (DatabaseError, KeyFileError, OSError, ValueError) as exc:
        print(f"streetgate ingest: {exc}", file=sys.stderr)
        return 2
