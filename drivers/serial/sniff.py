"""The ``serial sniff`` field tool: raw frames, decoded values, and why a frame failed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
import tomllib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from drivers.api import ConfigError, DeviceHealth, dump, load
from drivers.serial._model import DecodeError, Decoder, unescape
from drivers.serial.config import DecoderConfig, FramingConfig, QueryConfig, SerialConfig
from drivers.serial.decoders import make_decoder
from drivers.serial.framing import Framer, make_framer
from drivers.serial.port import SerialLink
from drivers.serial.profiles import PROFILES, profile_config

__all__ = ["SniffSetup", "Sniffer", "add_sniff_arguments", "build_setup", "sniff"]

Out = Callable[[str], None]
_log = logging.getLogger("streetgate.driver.serial.sniff")


def add_sniff_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("port")
    g.add_argument("--port", help="device path (default: from --config)")
    g.add_argument("--baud", type=int, help="baud rate (default: from --config, else 9600)")
    g.add_argument("--parity", choices=list("NEOMS"))
    g.add_argument("--bytesize", type=int, choices=[5, 6, 7, 8])
    g.add_argument("--stopbits", type=int, choices=[1, 2])
    g = p.add_argument_group("framing and decoding (or take them from a config)")
    g.add_argument("--config", type=Path, help="gateway.toml with [[drivers.serial]] tables")
    g.add_argument("--instance", help="which [[drivers.serial]] table of --config")
    g.add_argument("--device", help="which device of that table (default: the first)")
    g.add_argument("--profile", choices=sorted(PROFILES), help="a simulator profile's settings")
    g.add_argument("--framing", choices=["line", "fixed", "delimited", "length"])
    g.add_argument("--terminator", help=r"line end, escapes allowed (default \r\n)")
    g.add_argument("--length", type=int, help="fixed: frame size")
    g.add_argument("--start", help="sync/start bytes in hex")
    g.add_argument("--end", help="end byte in hex")
    g.add_argument("--escape", help="escape byte in hex")
    g.add_argument("--max-frame", type=int)
    g.add_argument("--decoder", choices=["raw", "nmea", "regex", "keyvalue"], default=None)
    g.add_argument("--pattern", help="regex with named groups")
    g.add_argument("--separator", help="keyvalue pair separator")
    g = p.add_argument_group("query/response and run length")
    g.add_argument("--query", help=r'command to send, escapes allowed: "READ\r\n"')
    g.add_argument("--interval", default="2s", help="between queries (default 2s)")
    g.add_argument("--timeout", default="1s", help="answer timeout (default 1s)")
    g.add_argument("--count", type=int, help="stop after this many frames")
    g.add_argument("--duration", type=float, help="stop after this many seconds")
    g.add_argument("--record", type=Path, help="save received bytes as a sim --script")


def _from_file(args: argparse.Namespace) -> SerialConfig:
    path = str(args.config)
    tables = tomllib.loads(args.config.read_text("utf-8")).get("drivers", {}).get("serial", [])
    for i, table in enumerate(tables):
        if args.instance in (None, table.get("instance")):
            data = {k: v for k, v in table.items() if k != "instance"}
            return load(SerialConfig, data, file=path, path=f"drivers.serial[{i}]")
    raise ValueError(f"{path}: no [[drivers.serial]] table with instance = {args.instance!r}")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    framing = {k: v for k, v in {
        "mode": args.framing, "length": args.length, "start": args.start, "end": args.end,
        "escape": args.escape, "max_frame": args.max_frame,
        "terminator": None if args.terminator is None
        else unescape(args.terminator).decode("latin-1"),
    }.items() if v is not None}
    decoder = {k: v for k, v in {"type": args.decoder, "pattern": args.pattern,
                                 "separator": args.separator}.items() if v is not None}
    return {"framing": framing, "decoder": decoder}


@dataclass(frozen=True)
class SniffSetup:
    """Everything sniff needs: the line, the framing, and optionally decoder and query."""

    port: str
    baudrate: int
    bytesize: int
    parity: str
    stopbits: int
    framing: FramingConfig
    decoder: DecoderConfig | None
    query: QueryConfig | None


def _base(args: argparse.Namespace) -> SerialConfig | None:
    if args.config is not None:
        return _from_file(args)
    if args.profile is not None:
        return load(SerialConfig, profile_config(args.profile, args.port or "?"),
                    file="profile", path=args.profile)
    return None


def build_setup(args: argparse.Namespace) -> SniffSetup:
    """Port, framing, decoder and query from --config/--profile, overridden by flags.

    Raises:
        ConfigError, ValueError, OSError: with a message for the technician.
    """
    base, flags = _base(args), _flags(args)
    port = args.port or (base.port if base else None)
    if port is None:
        raise ValueError("give --port (or --config with a [[drivers.serial]] table)")
    framing_table = dict(dump(base.framing)) if base else {}
    framing = load(FramingConfig, framing_table | flags["framing"], file="command line",
                   path="framing")
    device = _pick_device(base, args.device)
    decoder = device.decoder if device else None
    if flags["decoder"]:
        decoder = None if flags["decoder"].get("type") == "raw" else load(
            DecoderConfig, flags["decoder"], file="command line", path="decoder")
    query = device.query if device else None
    if args.query is not None:
        query = load(QueryConfig, {"command": unescape(args.query).decode("latin-1"),
                                   "interval": args.interval, "timeout": args.timeout},
                     file="command line", path="query")

    def pick(flag: Any, key: str, default: Any) -> Any:
        if flag is not None:
            return flag
        return getattr(base, key) if base is not None else default

    return SniffSetup(port, pick(args.baud, "baudrate", 9600),
                      pick(args.bytesize, "bytesize", 8), pick(args.parity, "parity", "N"),
                      pick(args.stopbits, "stopbits", 1), framing, decoder, query)


def _pick_device(base: SerialConfig | None, name: str | None) -> Any:
    if base is None:
        return None
    for dev in base.devices:
        if name in (None, dev.name):
            return dev
    raise ValueError(f"no device named {name!r}; devices: "
                     f"{', '.join(d.name for d in base.devices)}")


def show(frame: bytes) -> str:
    """Text quoted, text with a few odd bytes as escapes, binary in hex."""
    printable = sum(0x20 <= b < 0x7F or b in (9, 10, 13) for b in frame)
    if printable == len(frame):
        return repr(frame.decode("ascii"))
    if printable >= 0.75 * len(frame):
        return repr(frame)
    return frame.hex(" ")


@dataclass
class Tally:
    bytes_in: int = 0
    frames: int = 0
    decoded: int = 0
    failed: int = 0


class Sniffer:
    """Frames and decodes what arrives, and says so line by line."""

    def __init__(self, framer: Framer, decoder: Decoder | None, out: Out,
                 record: IO[str] | None = None) -> None:
        self.framer, self.decoder, self.out, self.record = framer, decoder, out, record
        self.tally = Tally()
        self.frame_seen = asyncio.Event()
        self._last_chunk: float | None = None

    def chunk(self, data: bytes) -> None:
        self.tally.bytes_in += len(data)
        self._record(data)
        before = self.framer.stats.as_dict()
        self.framer.push(data)
        while (frame := self.framer.pop()) is not None:
            self.frame(frame)
        after = self.framer.stats.as_dict()
        for key in ("garbage_bytes", "oversized", "partial_dropped"):
            if after[key] != before[key]:
                self.out(f"    ({key.replace('_', ' ')}: +{after[key] - before[key]})")

    def frame(self, frame: bytes) -> None:
        self.tally.frames += 1
        self.frame_seen.set()
        stamp = time.strftime("%H:%M:%S")
        self.out(f"[{stamp}] #{self.tally.frames} {len(frame)} B  {show(frame)}")
        if self.decoder is None:
            return
        try:
            fields = self.decoder.decode(frame)
        except DecodeError as exc:
            self.tally.failed += 1
            self.framer.reject()
            self.out(f"    FAILED ({exc.counter}): {exc}")
            return
        self.tally.decoded += 1
        if not fields:
            self.out("    (valid, nothing to decode in it)")
        for f in fields:
            quality = "" if f.quality.name == "GOOD" else f"  [{f.quality.name}]"
            self.out(f"    {f.name} = {f.value!r}{' ' + f.unit if f.unit else ''}{quality}")

    def summary(self) -> list[str]:
        t, s = self.tally, self.framer.stats
        lines = [(f"-- {t.bytes_in} B in, {t.frames} frames ({t.decoded} decoded, {t.failed} "
                 f"failed), {s.garbage_bytes} garbage B, {s.oversized} oversized, "
                 f"{s.partial_dropped} partial")]
        if t.bytes_in == 0:
            lines.append("hint: nothing received: check the port, wiring (TX/RX swapped, "
                         "A/B swapped on RS-485), power, and whether it needs --query")
        elif t.frames == 0:
            lines.append("hint: bytes but no frames: check baud rate and parity, then the "
                         "framing (terminator, start bytes, length)")
        elif t.failed and not t.decoded:
            lines.append("hint: frames but none decodes: check the decoder settings, or the "
                         "baud rate if the text looks garbled")
        return lines

    def _record(self, data: bytes) -> None:
        if self.record is None:
            return
        now = time.monotonic()
        if self._last_chunk is not None:
            self.record.write(f"wait {round((now - self._last_chunk) * 1000)}ms\n")
        self._last_chunk = now
        self.record.write(f"hex {data.hex(' ')}\n")


async def _query_loop(link: SerialLink, sniffer: Sniffer, query: QueryConfig) -> None:
    while True:
        sniffer.framer.reset()
        sniffer.frame_seen.clear()
        sniffer.out(f"> {query.payload!r}")
        with contextlib.suppress(OSError):
            await link.write(query.payload)
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
            async with asyncio.timeout(query.timeout):
                await sniffer.frame_seen.wait()
        except TimeoutError:
            sniffer.out(f"    (no answer within {query.timeout})")
        await asyncio.sleep(max(0.0, query.interval - query.timeout))


async def run_sniff(cfg: SniffSetup, args: argparse.Namespace, out: Out) -> int:
    """Sniff until --count frames, --duration seconds, or Ctrl-C."""
    decoder_cfg, query = cfg.decoder, cfg.query
    decoder = make_decoder(decoder_cfg, cfg.framing) if decoder_cfg else None
    with contextlib.ExitStack() as stack:
        record = stack.enter_context(args.record.open("w")) if args.record else None
        sniffer = Sniffer(make_framer(cfg.framing), decoder, out, record)
        link = SerialLink(cfg.port, baudrate=cfg.baudrate, bytesize=cfg.bytesize,
                          parity=cfg.parity, stopbits=cfg.stopbits, logger=_log,
                          health=DeviceHealth("port", _log), reopen_min=0.5, reopen_max=5.0,
                          on_state=lambda up: out(f"-- {cfg.port}: "
                                                  f"{'open' if up else link.reason}"))
        out(f"-- sniffing {cfg.port} at {cfg.baudrate} {cfg.bytesize}{cfg.parity}"
            f"{cfg.stopbits}, framing {cfg.framing.mode}, decoder "
            f"{decoder_cfg.type if decoder_cfg else 'raw'}")
        await _until_done(_pump(link, sniffer, query, args.count), args.duration)
        link.close()
        for line in sniffer.summary():
            out(line)
    ok = sniffer.tally.decoded if decoder else sniffer.tally.frames
    return 0 if ok else 1


async def _until_done(work: Coroutine[Any, Any, None], duration: float | None) -> None:
    """Run ``work`` until it ends, ``duration`` passes, or Ctrl-C (then still summarize)."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not main thread
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    tasks = [asyncio.create_task(work), asyncio.create_task(interrupted.wait())]
    try:
        await asyncio.wait(tasks, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
    if not tasks[0].cancelled() and (exc := tasks[0].exception()) is not None:
        raise exc


async def _pump(link: SerialLink, sniffer: Sniffer, query: QueryConfig | None,
                count: int | None) -> None:
    async with asyncio.TaskGroup() as tg:
        querier = tg.create_task(_query_loop(link, sniffer, query)) if query else None
        async with contextlib.aclosing(link.chunks()) as stream:
            async for data in stream:
                sniffer.chunk(data)
                if count is not None and sniffer.tally.frames >= count:
                    break
        if querier is not None:
            querier.cancel()


def sniff(args: argparse.Namespace, out: Out) -> int:
    """Entry point of ``streetgate serial sniff`` (``out`` prints one line)."""
    try:
        setup = build_setup(args)
    except ConfigError as exc:
        out(str(exc))
        return 2
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        out(f"streetgate serial sniff: {exc}")
        return 2
    return asyncio.run(run_sniff(setup, args, out))
