"""CLI commands around the core: demo, bench, new-driver; verify and ingest (platform tools,
from the ingest package, imported only when they run)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="verify signed batches from files or a broker; print SenML")
    p.add_argument("--key", action="append", default=[], metavar="[GATEWAY=]PUB.pem",
                   help="a gateway public key (repeatable); GATEWAY= binds it to that gateway")
    p.add_argument("--keys", metavar="DIR",
                   help="the registrar's key directory (<kid>.pub.pem, bound to their gateways)"
                        " or any directory of *.pem public keys")
    p.add_argument("--broker", metavar="HOST:PORT", help="subscribe instead of reading files")
    p.add_argument("--topic", default="streetgate/+/batch")
    p.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    p.add_argument("--quiet", action="store_true", help="no SenML, only the summary")
    p.add_argument("--plain-senml", action="store_true",
                   help="only what any RFC 8428 receiver accepts: no extension fields (bad-quality,"
                        " non-finite and unsynced readings and loss records left out)")
    p.add_argument("--state", metavar="FILE", type=Path,
                   help="keep dedup and replay state here across runs")
    p.add_argument("files", nargs="*", help="message files or directories of them")
    p.set_defaults(func=cmd_verify)

    # Parsed by ingest.cli (``streetgate ingest --help``); listed here for ``streetgate -h``.
    sub.add_parser("ingest", add_help=False,
                   help="platform ingest: verified batches into SQLite or PostgreSQL; queries")

    p = sub.add_parser("demo", help="simulated devices through a private broker, verified")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--outage", type=float, default=None,
                   help="seconds the broker is cut midway (default 3 when --seconds >= 12)")
    p.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    p.add_argument("--save-batches", metavar="DIR", type=Path)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("new-driver", help="write a driver package to start from")
    p.add_argument("name", help="driver name (lowercase, e.g. air_probe)")
    p.add_argument("--dir", type=Path, default=Path(), help="where to write it")
    p.set_defaults(func=cmd_new_driver)

    p = sub.add_parser("bench", help="throughput, bytes per reading, CPU and memory")
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("--modbus", action="store_true", help="also bench the Modbus driver")
    p.add_argument("--report", action="store_true",
                   help="only: wire and disk bytes saved by report by exception")
    p.set_defaults(func=cmd_bench)


def cmd_verify(args: argparse.Namespace) -> int:
    # A platform tool: the ingest package is imported only when it runs.
    from ingest._verify_cli import cmd_verify as run  # noqa: PLC0415

    return run(args)


def cmd_ingest(argv: list[str]) -> int:
    """``streetgate ingest ...``: its own parser, in the ingest package."""
    from ingest.cli import main  # noqa: PLC0415

    return main(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.broker import BrokerError  # noqa: PLC0415
    from gateway.demo import run_demo  # noqa: PLC0415

    out = None if args.json else sys.stdout
    try:
        summary = asyncio.run(run_demo(args.seconds, outage=args.outage,
                                       save_dir=args.save_batches, out=out))
    except BrokerError as exc:
        print(f"streetgate demo: {exc}", file=sys.stderr)
        return 1
    data = summary.as_dict()
    if args.json:
        print(json.dumps(data))
    else:
        print("\nsummary:")
        for k, v in data.items():
            print(f"  {k:<24} {v}")
        if args.save_batches:
            print(f"  batches and public.pem saved in {args.save_batches}")
    return 0 if summary.lost == 0 and summary.rejected == 0 else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import run_bench  # noqa: PLC0415

    t0 = time.monotonic()
    if args.report:
        from gateway._bench_report import report_savings  # noqa: PLC0415

        result = report_savings()
    else:
        result = run_bench(readings=args.readings, points=args.points, modbus=args.modbus)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:<28} {v}")
        print(f"(bench took {time.monotonic() - t0:.1f}s)")
    return 0


def cmd_new_driver(args: argparse.Namespace) -> int:
    from gateway.newdriver import generate  # noqa: PLC0415

    try:
        root = generate(args.name, args.dir)
    except (ValueError, FileExistsError) as exc:
        print(f"streetgate new-driver: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {root}: `pip install -e {root}` then `streetgate drivers` lists {args.name}")
    return 0
