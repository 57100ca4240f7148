"""``streetgate sim modbus``, the field tools ``streetgate modbus scan|read|write`` and the
fleet bench ``streetgate modbus bench``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

from drivers.api import ConfigError, Duration, Value, WriteError
from drivers.modbus import _fieldtools as ft
from drivers.modbus._errors import ModbusError, classify
from drivers.modbus._simstore import Fault
from drivers.modbus.codec import ORDERS
from drivers.modbus.profiles import available, load_profile, resolve_points

__all__ = ["register"]

Subparsers = argparse._SubParsersAction  # noqa: SLF001 - argparse names no public type


def register(sim: Subparsers[argparse.ArgumentParser],
             tools: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the simulator and the field tools to the ``streetgate`` command."""
    _register_sim(sim)
    _register_tools(tools)


def _register_sim(sim: Subparsers[argparse.ArgumentParser]) -> None:
    p = sim.add_parser("modbus", help="simulated Modbus units over TCP or an RTU pty pair",
                       description="Serve profiles' register maps with waveforms, counters and "
                                   "faults, until interrupted.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=int, metavar="PORT",
                       help="listen on this TCP port (0: any free)")
    where.add_argument("--rtu", action="store_true",
                       help="serve RTU on a new pty pair and print the device path to open")
    p.add_argument("--host", default="127.0.0.1", help="TCP address to listen on (%(default)s)")
    p.add_argument("--device", action="append", type=_unit_profile, metavar="UNIT:PROFILE",
                   help=f"a unit and its profile, repeatable ({', '.join(available())}); "
                        "default 1:energy-meter-3ph")
    p.add_argument("--fault", action="append", type=_unit_fault, default=[], metavar="UNIT:FAULT",
                   help="silent, exception=CODE, crc, short or slow=DELAY, each optionally "
                        "@RATE (e.g. 2:silent, 3:exception=2, 1:crc@0.1, 1:slow=300ms)")
    p.add_argument("--unmapped", choices=["zero", "exception"], default="zero",
                   help="registers outside the map read as 0 or answer exception 2")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--seed", type=int, default=None, help="random seed for fault rates")
    p.set_defaults(func=cmd_sim)


def _register_tools(tools: Subparsers[argparse.ArgumentParser]) -> None:
    tool = tools.add_parser("modbus", help="Modbus field tools: scan a bus, read and write "
                                           "registers")
    sub = tool.add_subparsers(dest="modbus_command", metavar="TOOL", required=True)
    s = sub.add_parser("scan", help="which unit ids answer on a bus, at which settings")
    _endpoint_args(s, scan=True)
    s.add_argument("--units", type=_units, default=list(range(1, 248)), metavar="RANGE",
                   help="unit ids, e.g. 1-247 (default) or 1,2,10-20")
    s.add_argument("--probe", type=_table_address, default=("holding", 0), metavar="TABLE:ADDR",
                   help="what to read from each unit (default holding:0)")
    s.add_argument("--all-settings", action="store_true",
                   help="keep scanning line settings after one finds units")
    s.set_defaults(func=cmd_scan)

    r = sub.add_parser("read", help="read registers once; raw and decoded side by side")
    _endpoint_args(r, scan=False)
    r.add_argument("--unit", type=int, required=True, help="unit id")
    r.add_argument("--profile", help="decode the points of this profile instead")
    r.add_argument("--table", choices=["holding", "input", "coil", "discrete"], default="holding")
    r.add_argument("--address", type=int, default=0, help="first address, 0-based")
    r.add_argument("--count", type=int, default=2, help="registers or bits to read")
    r.add_argument("--type", action="append", choices=list(ft.WIDE),
                   help="only these wide types in the side-by-side table")
    r.set_defaults(func=cmd_read)
    _register_write(sub)
    _register_bench(sub)


def _register_bench(sub: Subparsers[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("bench", help="CPU per reading polling a simulated fleet over TCP",
                       description="Poll DEVICES simulated units of REGISTERS holding registers "
                                   "each every INTERVAL (simulator in its own process) and "
                                   "print CPU per reading, readings/s, polls on time, lost.")
    b.add_argument("--devices", type=int, default=50, help="units (default %(default)s)")
    b.add_argument("--registers", type=int, default=100,
                   help="u16 holding registers per unit (default %(default)s)")
    b.add_argument("--interval", type=_duration, default=Duration(0.1),
                   help="poll period (default %(default)ss)")
    b.add_argument("--seconds", type=float, default=10.0,
                   help="measured time (default %(default)s)")
    b.add_argument("--in-flight", type=int, default=1, help="max_in_flight of the bus")
    b.add_argument("--startup", action="store_true",
                   help="also time `check` and `run` to the first batch at a private broker "
                        "(needs mosquitto), and the daemon's CPU per reading")
    b.add_argument("--points", action="store_true",
                   help="with --startup: one point table per register instead of a range")
    b.set_defaults(func=cmd_bench)


def _register_write(sub: Subparsers[argparse.ArgumentParser]) -> None:
    w = sub.add_parser("write", help="write one value, read it back",
                       description="Encode VALUE as the type, order and scale say, write it "
                                   "(FC 6 or 5 for one register or coil, FC 16 or 15 for more) "
                                   "and read it back.")
    _endpoint_args(w, scan=False)
    w.add_argument("--unit", type=int, required=True, help="unit id")
    w.add_argument("--table", choices=["holding", "coil"], default="holding")
    w.add_argument("--address", type=int, required=True, help="0-based address")
    w.add_argument("--type", choices=["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64",
                                      "string", "bit"],
                   help="value type (default u16; bit for coils)")
    w.add_argument("--order", choices=list(ORDERS), default="ABCD",
                   help="word and byte order of wide values (default ABCD)")
    w.add_argument("--bit", type=int, help="for --type bit on a holding register: bit 0-15")
    w.add_argument("--count", type=int, help="for --type string: registers")
    w.add_argument("--scale", type=float, help="value = raw * scale + offset")
    w.add_argument("--offset", type=float)
    w.add_argument("--multiple", action="store_true",
                   help="use FC 16 / FC 15 even for one register or coil")
    w.add_argument("value", help="a number; on/off, true/false or 1/0 for coils and bits; "
                                 "a text for strings")
    w.set_defaults(func=cmd_write)


def _endpoint_args(p: argparse.ArgumentParser, *, scan: bool) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST[:PORT]", help="Modbus TCP device or gateway")
    where.add_argument("--rtu", metavar="DEVICE", help="serial port, e.g. /dev/ttyUSB0")
    many = "comma-separated list" if scan else "one value"
    p.add_argument("--baud", default="9600,19200,38400,115200" if scan else "9600",
                   help=f"rtu: baud rates, {many} (default %(default)s)")
    p.add_argument("--parity", default="E,N" if scan else "E",
                   help=f"rtu: N, E or O, {many} (default %(default)s)")
    p.add_argument("--stop-bits", default="1", help=f"rtu: 1 or 2, {many} (default %(default)s)")
    p.add_argument("--timeout", type=_duration, default=Duration(0.2 if not scan else 0.1),
                   help="answer timeout (default %(default)ss)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _duration(text: str) -> Duration:
    try:
        return Duration.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 200ms; got {text!r}") \
            from None


def _units(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out += range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected unit ids like 1-247 or 1,5,9; "
                                             f"got {text!r}") from None
    return out


def _unit_profile(text: str) -> tuple[int, str]:
    unit, _, profile = text.partition(":")
    if not unit.isdigit() or profile not in available():
        raise argparse.ArgumentTypeError(f"expected UNIT:PROFILE with a profile among "
                                         f"{', '.join(available())}; got {text!r}")
    return int(unit), profile


def _unit_fault(text: str) -> tuple[int, Fault]:
    unit, _, fault = text.partition(":")
    try:
        return int(unit), Fault.parse(fault)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _table_address(text: str) -> tuple[str, int]:
    table, _, address = text.partition(":")
    if table not in ("holding", "input", "coil", "discrete") or not address.isdigit():
        raise argparse.ArgumentTypeError(f"expected TABLE:ADDRESS such as holding:0; got {text!r}")
    return table, int(address)


def _endpoints(args: argparse.Namespace) -> list[ft.Endpoint]:
    if args.tcp is not None:
        return [ft.Endpoint(tcp=args.tcp)]
    return ft.serial_endpoints(args.rtu, [int(b) for b in args.baud.split(",")],
                               [p.strip().upper() for p in args.parity.split(",")],
                               [int(s) for s in args.stop_bits.split(",")])


# -- simulator -----------------------------------------------------------------------------
def cmd_sim(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from drivers.modbus.sim import ModbusSimulator, profile_unit  # noqa: PLC0415 - lazy

    devices = args.device or [(1, "energy-meter-3ph")]
    sim = ModbusSimulator([profile_unit(u, prof, unmapped=args.unmapped) for u, prof in devices],
                          seed=args.seed)
    sim.on_write = lambda event: print(f"write {event.describe()}", flush=True)
    for unit, fault in args.fault:
        if unit not in sim.units:
            print(f"--fault {unit}: no such unit", file=sys.stderr)
            return 2
        sim.set_fault(unit, fault)
    if args.tcp is not None:
        port = await sim.serve_tcp(args.host, args.tcp)
        print(f"modbus simulator listening on tcp://{args.host}:{port}")
    else:
        print(f"modbus simulator on RTU line {await sim.serve_rtu()}")
    for unit, prof in devices:
        fault = sim.units[unit].fault
        print(f"  unit {unit}: {prof}" + (f" (fault {fault.kind})" if fault else ""))
    sys.stdout.flush()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.seconds)
    await sim.close()
    print("served: " + ", ".join(f"{k} {v}" for k, v in sorted(sim.stats.items())))
    return 0


# -- scan ------------------------------------------------------------------------------------
def cmd_scan(args: argparse.Namespace) -> int:
    endpoints = _endpoints(args)
    table, address = args.probe
    if not args.json:
        print(f"scanning {endpoints[0].rtu or 'tcp://' + args.tcp}: {len(endpoints)} "
              f"setting(s) x {len(args.units)} unit(s), timeout {args.timeout}")
    result = asyncio.run(ft.scan(endpoints, args.units, table=table, address=address,
                                 reply_timeout=float(args.timeout), all_settings=args.all_settings))
    if args.json:
        print(json.dumps({"answers": [vars(a) for a in result.answers],
                          "garbled": result.garbled, "unavailable": result.unavailable},
                         indent=2))
        return 0 if result.answers else 1
    for settings, why in result.unavailable.items():
        print(f"  {settings:<12} cannot open: {why}")
    for a in result.answers:
        print(f"  {a.settings:<12} unit {a.unit:<4} {a.describe(table, address)}")
    for settings, n in result.garbled.items():
        print(f"  {settings:<12} {n} garbled answer(s): wrong baud rate or parity, "
              "or two devices with one unit id")
    found_at = sorted({a.settings for a in result.answers})
    print(f"found {len(result.answers)} unit(s)" + (f" at {', '.join(found_at)}" if found_at
                                                   else "; check wiring, A/B polarity and "
                                                        "termination"))
    return 0 if result.answers else 1


# -- read -------------------------------------------------------------------------------------
def cmd_read(args: argparse.Namespace) -> int:
    ep = _endpoints(args)[0]
    try:
        if args.profile:
            return _read_profile(args, ep)
        items = asyncio.run(ft.read_raw(ep, args.unit, args.table, args.address, args.count,
                                        reply_timeout=float(args.timeout)))
    except ModbusError as exc:
        failure = classify(exc)
        if args.json:
            print(json.dumps({"error": failure.message, "quality": failure.quality.name,
                              "value": failure.value}))
        else:
            print(f"no data: {failure.quality.name.lower()}: {failure.message}")
        return 1
    bits = args.table in ("coil", "discrete")
    wide = [] if bits else ft.side_by_side(args.address, [int(i) for i in items],
                                          args.type or ft.WIDE)
    if args.json:
        print(json.dumps({"unit": args.unit, "table": args.table, "address": args.address,
                          "raw": [int(i) for i in items], "decoded": wide}, indent=2))
        return 0
    print(f"unit {args.unit} {args.table} {args.address}..{args.address + args.count - 1} "
          f"on {ep.describe()}")
    _print_raw(args.address, [int(i) for i in items], bits=bits)
    if wide:
        print(f"\n{'address':<8} {'type':<5} " + " ".join(f"{o:<22}" for o in ORDERS))
        for row in wide:
            print(f"{row['address']:<8} {row['type']:<5} "
                  + " ".join(f"{row['orders'][o]!s:<22}" for o in ORDERS))
    return 0


def _print_raw(address: int, items: list[int], *, bits: bool) -> None:
    if bits:
        print(f"{'address':<8} value")
        for k, v in enumerate(items):
            print(f"{address + k:<8} {int(v)}")
        return
    print(f"{'address':<8} {'hex':<7} {'u16':<6} {'i16':<7} ascii")
    for k, v in enumerate(items):
        text = "".join(chr(c) if 32 <= c < 127 else "." for c in v.to_bytes(2, "big"))
        print(f"{address + k:<8} 0x{v:04x} {v:<6} {v - 65536 if v > 32767 else v:<7} {text}")


def _read_profile(args: argparse.Namespace, ep: ft.Endpoint) -> int:
    from drivers.modbus.config import DeviceConfig  # noqa: PLC0415 - lazy

    load_profile(args.profile)
    points, _issues = resolve_points(DeviceConfig(name="read", unit=args.unit,
                                                  profile=args.profile))
    rows = asyncio.run(ft.read_points(ep, args.unit, points, float(args.timeout)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"unit {args.unit} as {args.profile} on {ep.describe()}")
    print(f"{'point':<20} {'table':<9} {'addr':<6} {'type':<7} {'order':<5} {'raw':<20} "
          f"{'value':<16} {'unit':<5} quality")
    for row in rows:
        raw = " ".join(f"{r:04x}" for r in row["raw"]) if row["raw"] is not None else "-"
        kind = row["type"] + (f".{row['bit']}" if row["bit"] is not None else "")
        print(f"{row['point']:<20} {row['table']:<9} {row['address']:<6} {kind:<7} "
              f"{row['order']:<5} {raw:<20} {_shown(row['value']):<16} {row['unit'] or '':<5} "
              f"{row['quality']}")
    return 0 if all(r["quality"] == "GOOD" for r in rows) else 1


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


# -- write -------------------------------------------------------------------------------------
_TRUE, _FALSE = ("1", "on", "true"), ("0", "off", "false")


def _write_value(text: str, kind: str) -> Value:
    if kind == "bit":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        return text  # refused by the encoder, with the reason
    if kind == "string":
        return text
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def cmd_write(args: argparse.Namespace) -> int:
    ep = _endpoints(args)[0]
    kind = args.type or ("bit" if args.table == "coil" else "u16")
    word, byte = ORDERS[args.order]
    point = {"table": args.table, "address": args.address, "type": kind, "word_order": word,
             "byte_order": byte}
    point |= {k: getattr(args, k) for k in ("bit", "count", "scale", "offset")
              if getattr(args, k) is not None}
    value = _write_value(args.value, kind)
    where = f"unit {args.unit} {args.table} {args.address} ({kind}) on {ep.describe()}"
    # The outcome is printed below; the driver's own warning would say it twice.
    logging.getLogger("streetgate.driver.modbus.tool").setLevel(logging.ERROR)
    try:
        got = asyncio.run(ft.write_point(ep, args.unit, point, value,
                                         reply_timeout=float(args.timeout),
                                         multiple=args.multiple))
    except ConfigError as exc:
        for line in exc.lines():
            print(line.replace("arguments.devices[0].points[0].", "--"), file=sys.stderr)
        return 2
    except WriteError as exc:
        if args.json:
            print(json.dumps({"error": exc.reason, "detail": exc.detail, "code": exc.code,
                              "value": exc.value}))
        else:
            print(f"{where}: not written as asked: {exc.reason}: {exc.detail}")
        return 1
    if args.json:
        print(json.dumps({"unit": args.unit, "table": args.table, "address": args.address,
                          "type": kind, "written": value, "value": got}))
    else:
        print(f"{where}: wrote {value!r}, read back {got!r}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from drivers.modbus._bench_fleet import bench_fleet  # noqa: PLC0415 - only when asked

    out: dict[str, Any] = {"poll": bench_fleet(args.devices, args.registers,
                                               float(args.interval), args.seconds,
                                               args.in_flight)}
    if args.startup:
        from drivers.modbus._bench_startup import bench_startup  # noqa: PLC0415

        out["startup"] = bench_startup(args.devices, args.registers, float(args.interval),
                                       min(args.seconds, 10.0), ranges=not args.points)
    print(json.dumps(out, indent=2))
    return 0
