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
    # The uplink's TLS and login options, for a TLS, mutual-TLS or password listener.
    p.add_argument("--ca", metavar="FILE", help="CA of the broker's certificate (enables TLS)")
    p.add_argument("--cert", metavar="FILE", help="client certificate, for mutual TLS")
    p.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key "
                   "(--key names gateway public keys here; default: in the --cert file)")
    p.add_argument("--username")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up connecting and subscribing after this long (default 10)")
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
    p.add_argument("--ingest", action="store_true",
                   help="also store every batch with an ingest worker (SQLite in the demo's "
                        "directory) and print its completeness report")
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
                                       save_dir=args.save_batches, out=out,
                                       ingest=args.ingest))
    except BrokerError as exc:
        print(f"streetgate demo: {exc}", file=sys.stderr)
        return 1
    data = summary.as_dict()
    report = data.pop("ingest", None)
    if args.json:
        print(json.dumps(data if report is None else {**data, "ingest": report}))
    else:
        print("\nsummary:")
        for k, v in data.items():
            print(f"  {k:<24} {v}")
        if args.save_batches:
            print(f"  batches and public.pem saved in {args.save_batches}")
        if report is not None:
            _print_completeness(report, summary.produced)
    complete = report is None or _complete(report, summary.produced)
    return 0 if summary.lost == 0 and summary.rejected == 0 and complete else 1


def _complete(report: dict[str, Any], produced: int) -> bool:
    """Every reading produced is stored, and no epoch has a hole."""
    epochs = report["epochs"]
    return sum(e["received"] for e in epochs) == produced and not any(
        e["holes"] for e in epochs)


def _print_completeness(report: dict[str, Any], produced: int) -> None:
    print(f"\ningest completeness report for {report['gateway_id']} (SQLite, `streetgate ingest "
          "query report`):")
    for e in report["epochs"]:
        print(f"  epoch {e['epoch']}: received {e['received']} of {produced} produced, "
              f"{e['batches']} batches, {e['duplicates']} duplicates dropped, holes "
              f"{e['holes'] or 'none'}, gaps {e['gaps']}, losses {len(e['losses'])}, "
              f"refused {e['refused'] or 'none'}")


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
