"""``streetgate sim serial`` and ``streetgate serial sniff``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path

from drivers.serial.profiles import PROFILES, profile_toml
from drivers.serial.sim import SerialSimulator, load_script, parse_dropout
from drivers.serial.sniff import add_sniff_arguments, sniff

__all__ = ["register", "run_sim", "run_sniff_command"]


def register(
    sim: argparse._SubParsersAction[argparse.ArgumentParser],
    tools: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``sim serial`` and ``serial sniff`` to the ``streetgate`` command."""
    p = sim.add_parser("serial", help="simulated serial device on a pty pair",
                       description="Run a simulated serial device on a pty pair and print "
                                   "the path to configure as the driver's port.")
    p.add_argument("--profile", choices=sorted(PROFILES), default="nmea-weather")
    p.add_argument("--script", type=Path, help="replay this script instead of generating "
                                               "frames (line/text/hex/wait steps)")
    p.add_argument("--once", action="store_true", help="play the script once, then idle")
    p.add_argument("--noise", type=float, default=0.0, metavar="RATE",
                   help="probability per frame of garbage, bit flip, truncation, oversize")
    p.add_argument("--dropout", metavar="EVERY/FOR", help='e.g. "30s/5s"')
    p.add_argument("--dropout-kind", choices=["unplug", "silence"], default="unplug")
    p.add_argument("--rate", type=float, default=1.0, metavar="HZ")
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                   help="delay before each answer (overlapping commands are counted)")
    p.add_argument("--link", type=Path, help="stable device path (default: a temp dir)")
    p.add_argument("--seed", type=int)
    p.add_argument("--duration", type=float, metavar="SECONDS", help="exit after this long")
    p.add_argument("--print-config", action="store_true",
                   help="print a [[drivers.serial]] table for this device")
    p.set_defaults(func=run_sim)

    serial_tools = tools.add_parser("serial", help="serial field tools").add_subparsers(
        title="tools", required=True)
    s = serial_tools.add_parser("sniff", help="show raw frames and their decoded values",
                                description="Show each frame on a port, hex or text, and "
                                            "its decoded values or why it failed.")
    add_sniff_arguments(s)
    s.set_defaults(func=run_sniff_command)


def run_sniff_command(args: argparse.Namespace) -> int:
    """Entry point of ``streetgate serial sniff``."""
    return sniff(args, lambda line: print(line, flush=True))


def run_sim(args: argparse.Namespace) -> int:
    """Entry point of ``streetgate sim serial``."""
    try:
        script = load_script(args.script.read_text("utf-8")) if args.script else None
        dropout = parse_dropout(args.dropout) if args.dropout else None
    except (OSError, ValueError) as exc:
        print(f"streetgate sim serial: {exc}")
        return 2
    if not 0.0 <= args.noise <= 1.0 or args.rate <= 0 or args.latency < 0:
        print("streetgate sim serial: --noise must be within 0..1, --rate positive and "
              "--latency not negative")
        return 2
    link = args.link or Path(tempfile.mkdtemp(prefix="streetgate-sim-")) / "ttySIM0"
    sim = SerialSimulator(link, args.profile, rate=args.rate, noise=args.noise, seed=args.seed,
                          script=script, dropout=dropout, dropout_kind=args.dropout_kind,
                          once=args.once, latency=args.latency,
                          on_event=lambda msg: print(msg, flush=True))
    asyncio.run(_serve(sim, args))
    return 0


async def _serve(sim: SerialSimulator, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    async with sim:
        print(f"serial simulator {args.profile} on {sim.link} -> {sim.device}", flush=True)
        if args.print_config:
            print(profile_toml(args.profile, str(sim.link)), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.duration)
    print(f"stopped: {sim.stats}", flush=True)
