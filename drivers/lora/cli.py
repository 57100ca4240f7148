"""``streetgate sim lora-forwarder|lora-modem`` and ``streetgate lora decode|listen``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import socket
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.api import DriverContext, Duration, load
from drivers.lora import lorawan
from drivers.lora.config import DeviceConfig, ForwarderConfig
from drivers.lora.gwmp import RxPacket
from drivers.lora.points import Decoded
from drivers.lora.sessions import Device, Outcome
from drivers.lora.sim import DEFAULT_EUI, ForwarderSimulator, demo_devices, parse_devices

if TYPE_CHECKING:
    from drivers.lora.simmodem import ModemSimulator

__all__ = ["cmd_decode", "cmd_listen", "cmd_sim_forwarder", "cmd_sim_modem", "device_tables",
           "register_forwarder", "register_modem"]

_KINDS = ("lora_forwarder", "lora_modem")


def _duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(Duration.parse(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 5s or 250ms; "
                                         f"got {text!r}") from None


def _devices_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help="gateway.toml (its lora driver tables) or a file of [[devices]] tables; "
                        "default: the demo devices of example.toml")
    p.add_argument("--instance", help="which lora driver instance of the file (default: first)")


def register_forwarder(sim: Any, tools: Any) -> None:
    """Add ``sim lora-forwarder`` and the ``lora`` field tools."""
    p = sim.add_parser("lora-forwarder", aliases=["lora_forwarder"],
                       help="play a LoRa packet forwarder sending signed uplinks over GWMP")
    _devices_args(p)
    p.add_argument("--host", default="127.0.0.1", help="gateway address (default: %(default)s)")
    p.add_argument("--port", type=int, default=1700, help="gateway UDP port (default: 1700)")
    p.add_argument("--interval", type=_duration, default=5.0, help="time between rounds")
    p.add_argument("--count", type=int, default=0, help="rounds to send (0: until Ctrl-C)")
    p.add_argument("--gateway-eui", default=DEFAULT_EUI)
    p.add_argument("--fcnt-start", type=int, default=0, help="first frame counter")
    p.add_argument("--wrong-mic-every", type=int, default=0, metavar="N")
    p.add_argument("--replay-every", type=int, default=0, metavar="N")
    p.add_argument("--malformed-every", type=int, default=0, metavar="N")
    p.add_argument("--confirmed", action="store_true", help="send confirmed uplinks")
    p.set_defaults(func=cmd_sim_forwarder)
    _register_tools(tools)


def _register_tools(tools: Any) -> None:
    lora = tools.add_parser("lora", help="LoRa field tools").add_subparsers(
        dest="lora_command", metavar="TOOL")
    lora.required = True
    d = lora.add_parser("decode", help="check and decrypt one LoRaWAN frame")
    d.add_argument("phypayload", help="the frame, hex or base64")
    d.add_argument("--nwkskey", default=os.environ.get("STREETGATE_LORA_NWKSKEY"),
                   help="NwkSKey (hex; or env STREETGATE_LORA_NWKSKEY)")
    d.add_argument("--appskey", default=os.environ.get("STREETGATE_LORA_APPSKEY"),
                   help="AppSKey (hex; or env STREETGATE_LORA_APPSKEY)")
    d.add_argument("--fcnt", type=int, help="full 32-bit frame counter (default: as sent)")
    d.add_argument("--decoder", choices=["cayenne", "raw", "none"],
                   help="payload decoder (default: the device's, else none)")
    _devices_args(d)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_decode)

    ls = lora.add_parser("listen", help="show live packets from the packet forwarder")
    _devices_args(ls)
    ls.add_argument("--host", help="address to listen on (default: the config's or 127.0.0.1)")
    ls.add_argument("--port", type=int, help="UDP port (default: the config's or 1700)")
    ls.add_argument("--count", type=int, default=0, help="stop after N packets")
    ls.add_argument("--duration", type=_duration, default=0.0, help="stop after this long")
    ls.add_argument("--json", action="store_true", help="one JSON object per packet")
    ls.set_defaults(func=cmd_listen)


def register_modem(sim: Any) -> None:
    """Add ``sim lora-modem``."""
    p = sim.add_parser("lora-modem", aliases=["lora_modem"],
                       help="play a LoRa UART module (RN2483 or transparent) on a pty")
    _devices_args(p)
    p.add_argument("--link", default="./ttyLORA",
                   help="symlink to create for the pty (point the driver's port here)")
    p.add_argument("--mode", choices=["rn2483", "transparent"], default="rn2483")
    p.add_argument("--payload", choices=["lorawan", "raw"], default="lorawan")
    p.add_argument("--encoding", choices=["hex", "base64", "binary"], default="hex",
                   help="transparent mode: how packets are written")
    p.add_argument("--interval", type=_duration, default=5.0, help="time between packets")
    p.add_argument("--count", type=int, default=0, help="packets to send (0: until Ctrl-C)")
    p.set_defaults(func=cmd_sim_modem)


# -- device tables ------------------------------------------------------------------------------
def device_tables(path: str | None, instance: str | None) -> tuple[dict[str, Any], str, str]:
    """The driver table holding the devices, its file name and key path."""
    if path is None:
        return {"devices": demo_devices()}, "demo devices", ""
    with Path(path).open("rb") as f:
        data = tomllib.load(f)
    drivers = data.get("drivers", {})
    for kind in _KINDS:
        for i, table in enumerate(drivers.get(kind, [])):
            if instance is None or table.get("instance") == instance:
                return table, path, f"drivers.{kind}[{i}]"
    if "devices" in data and instance is None:
        return data, path, ""
    where = f"instance {instance!r}" if instance else "[[drivers.lora_forwarder]] or [[devices]]"
    raise SystemExit(f"{path}: no {where} found")


def load_device_configs(path: str | None, instance: str | None) -> list[DeviceConfig]:
    table, file, at = device_tables(path, instance)
    prefix = f"{at}.devices" if at else "devices"
    return parse_devices(table.get("devices", []), file=file, path=prefix)


# -- sim lora-forwarder -------------------------------------------------------------------------
def cmd_sim_forwarder(args: argparse.Namespace) -> int:
    devices = load_device_configs(args.config, args.instance)
    sim = ForwarderSimulator(
        args.host, args.port, devices, gateway_eui=args.gateway_eui, interval=args.interval,
        fcnt_start=args.fcnt_start, wrong_mic_every=args.wrong_mic_every,
        replay_every=args.replay_every, malformed_every=args.malformed_every,
        confirmed=args.confirmed)
    sim.report = _stamped
    print(f"sending uplinks of {len(sim.devices)} device(s) to {args.host}:{args.port} "
          f"as gateway {args.gateway_eui}", flush=True)
    return asyncio.run(_run_sim(sim, args.count))


async def _run_sim(sim: ForwarderSimulator, count: int) -> int:
    await sim.open()
    try:
        n = 0
        while count == 0 or n < count:
            sim.send_round()
            n += 1
            await asyncio.sleep(sim.interval if count == 0 or n < count else 0.3)
    finally:
        await sim.close()
    c = sim.counters
    print(f"rounds {sim.rounds}, frames {c['frames']}, datagrams {c['datagrams']}, "
          f"PUSH_ACK {c['push_ack']}, PULL_ACK {c['pull_ack']}, wrong MICs {c['wrong_mics']}, "
          f"replays {c['replays']}, malformed {c['malformed']}, PULL_RESP {c['pull_resp']}, "
          f"downlinks {c['downlinks']}")
    if c["push_ack"] == 0:
        print(f"no PUSH_ACK received: is the gateway listening on {sim.target[0]}:"
              f"{sim.target[1]}?", file=sys.stderr)
        return 1
    return 0


# -- sim lora-modem -----------------------------------------------------------------------------
def cmd_sim_modem(args: argparse.Namespace) -> int:
    from drivers.lora.simmodem import ModemSimulator  # noqa: PLC0415 - needs a pty, POSIX only

    devices = load_device_configs(args.config, args.instance)
    if not devices:
        print("no devices to simulate", file=sys.stderr)
        return 2
    sim = ModemSimulator(Path(args.link).absolute(), devices, mode=args.mode,
                         payload=args.payload, encoding=args.encoding, interval=args.interval)
    sim.report = _stamped
    return asyncio.run(_serve_modem(sim, args.count))


async def _serve_modem(sim: ModemSimulator, count: int) -> int:
    sim.plug()
    print(f"{sim.mode} module on {sim.link.readlink()}, linked as {sim.link}; Ctrl-C to stop",
          flush=True)
    try:
        while count == 0 or sim.counters["packets"] < count:
            await asyncio.sleep(sim.interval)
            sim.tick()
    finally:
        await sim.close()
    print(f"packets {sim.counters['packets']}, missed (not receiving) {sim.counters['missed']}, "
          f"commands {sim.counters['commands']}, transmitted {sim.counters['transmitted']}")
    return 0


def _stamped(line: str) -> None:
    """A simulator's downlink report, as it happens."""
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


# -- lora decode --------------------------------------------------------------------------------
def _frame_bytes(text: str) -> bytes:
    clean = text.strip().removeprefix("0x").replace(" ", "").replace(":", "")
    try:
        return bytes.fromhex(clean)
    except ValueError:
        pass
    try:
        return base64.b64decode(clean + "=" * (-len(clean) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not hex or base64") from None


def _key(text: str | None, name: str) -> bytes | None:
    if text is None:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 16:
        raise ValueError(f"{name} must be 32 hex digits")
    return key


def _find_device(args: argparse.Namespace, dev_addr: int) -> Device | None:
    if args.config is None:
        return None
    for cfg in load_device_configs(args.config, args.instance):
        dev = Device(cfg)
        if dev.dev_addr == dev_addr:
            return dev
    return None


def decode_report(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The fields of the frame in ``args`` as a JSON-able dict, and the exit code."""
    frame = lorawan.parse_data_frame(_frame_bytes(args.phypayload))
    dev = _find_device(args, frame.dev_addr)
    nwk = _key(args.nwkskey, "--nwkskey") or (dev.nwk_skey if dev else None)
    app = _key(args.appskey, "--appskey") or (dev.app_skey if dev else None)
    fcnt = frame.fcnt16 if args.fcnt is None else args.fcnt
    if fcnt & 0xFFFF != frame.fcnt16:
        raise ValueError(f"--fcnt {fcnt} does not end in the frame's 16-bit FCnt "
                         f"{frame.fcnt16}")
    out: dict[str, Any] = {
        "mtype": frame.mtype.name, "dev_addr": frame.dev_addr_hex,
        "device": dev.name if dev else None, "fctrl": {
            "adr": frame.adr, "adr_ack_req": frame.adr_ack_req, "ack": frame.ack,
            "fopts_len": len(frame.fopts)},
        "fcnt": fcnt, "fcnt16": frame.fcnt16, "fopts": frame.fopts.hex(), "fport": frame.fport,
        "frm_payload": frame.frm_payload.hex(), "mic": {"received": frame.mic.hex()}}
    code = 0
    if nwk is not None:
        ok = lorawan.verify_mic(frame, nwk, fcnt)
        out["mic"]["computed"] = lorawan.compute_mic(
            nwk, frame.signed, dev_addr=frame.dev_addr, fcnt=fcnt, uplink=frame.uplink).hex()
        out["mic"]["ok"] = ok
        code = 0 if ok else 1
    key = nwk if frame.fport == 0 else app
    if key is not None and frame.fport is not None:
        plain = lorawan.crypt_frm_payload(key, frame.frm_payload, dev_addr=frame.dev_addr,
                                          fcnt=fcnt, uplink=frame.uplink)
        out["payload"] = plain.hex()
        decoder = args.decoder or (dev.cfg.decoder if dev else "none")
        if decoder != "none" and frame.fport:
            if dev is None or args.decoder:
                dev = Device(DeviceConfig(name="frame", decoder=decoder))
            out["points"] = _points(dev.decode(frame.fport, plain))
    return out, code


def _points(decoded: Decoded) -> dict[str, Any]:
    pts: dict[str, Any] = {p.name: {"value": p.value.hex() if isinstance(p.value, bytes)
                                    else p.value, "unit": p.unit, "quality": p.quality.name}
                           for p in decoded.points}
    if decoded.error:
        pts["error"] = decoded.error
    return pts


def _shown(payload: str | None) -> str:
    if payload is None:
        return "not decrypted (no AppSKey)"
    text = bytes.fromhex(payload)
    printable = text and all(32 <= b < 127 for b in text)
    return f"{payload or '-'} {text.decode('ascii')!r}" if printable else payload or "-"


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        report, code = decode_report(args)
    except ValueError as exc:
        print(f"cannot decode: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
        return code
    mic = report["mic"]
    check = ("not checked (no NwkSKey)" if "ok" not in mic else
             "OK" if mic["ok"] else f"FAIL, computed {mic['computed']} (wrong key or FCnt?)")
    rows = [("MType", report["mtype"]), ("DevAddr", report["dev_addr"]),
            ("Device", report["device"] or "-"),
            ("FCtrl", ", ".join(f"{k}={v}" for k, v in report["fctrl"].items())),
            ("FCnt", f"{report['fcnt']} (on air {report['fcnt16']})"),
            ("FOpts", report["fopts"] or "-"), ("FPort", report["fport"]),
            ("FRMPayload", report["frm_payload"] or "-"),
            ("MIC", f"{mic['received']} {check}"),
            ("Payload", _shown(report.get("payload")))]
    rows += [(f"  {name}", f"{p['value']} {p['unit'] or ''}".rstrip() if isinstance(p, dict)
              else p) for name, p in report.get("points", {}).items()]
    for label, value in rows:
        print(f"{label:<12}{value}")
    return code


# -- lora listen --------------------------------------------------------------------------------
def cmd_listen(args: argparse.Namespace) -> int:
    table: dict[str, Any] = {}
    file, at = "command line", ""
    if args.config is not None:
        source, file, at = device_tables(args.config, args.instance)
        table = {k: v for k, v in source.items() if k in ("host", "port", "devices")}
    if args.host:
        table["host"] = args.host
    if args.port:
        table["port"] = args.port
    cfg = load(ForwarderConfig, table, file=file, path=at)
    try:
        with socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET,
                           socket.SOCK_DGRAM) as probe:
            probe.bind((cfg.host, cfg.port))
    except OSError as exc:
        print(f"cannot listen on {cfg.host}:{cfg.port}: {exc} (is the streetgate daemon "
              f"running? stop it or use --port)", file=sys.stderr)
        return 1
    return asyncio.run(_listen(cfg, count=args.count, duration=args.duration,
                               as_json=args.json))


class _Discard:
    def emit(self, readings: Any) -> None:
        del readings  # listen shows packets through the observer, not readings

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def backlog(self) -> int:
        return 0


async def _listen(cfg: ForwarderConfig, *, count: int, duration: float, as_json: bool) -> int:
    from drivers.lora.forwarder import LoraForwarderDriver  # noqa: PLC0415

    driver = LoraForwarderDriver(cfg, standalone_context())
    seen = asyncio.Event()
    heard = 0

    def show(eui: str, packet: RxPacket, outcome: Outcome) -> None:
        nonlocal heard
        if count and heard >= count:
            return
        heard += 1
        print(packet_line(eui, packet, outcome, as_json=as_json), flush=True)
        if count and heard >= count:
            seen.set()

    driver.observers.append(show)
    if not as_json:
        print(f"listening on {cfg.host}:{cfg.port} for {len(cfg.devices)} configured "
              f"device(s); Ctrl-C to stop", flush=True)
    task = asyncio.create_task(driver.run(_Discard()), name="streetgate[lora listen]")
    try:
        await asyncio.wait_for(seen.wait(), timeout=duration or None)
    except TimeoutError:
        pass
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return 0


def packet_line(eui: str, packet: RxPacket, outcome: Outcome, *, as_json: bool) -> str:
    """One line for ``lora listen``: radio metadata, frame header and what became of it."""
    frame = outcome.frame
    info: dict[str, Any] = {
        "time": time.strftime("%H:%M:%S"), "gateway": eui, "freq": packet.freq,
        "datr": packet.datr, "rssi": packet.rssi, "snr": packet.lsnr,
        "dev_addr": frame.dev_addr_hex if frame else None,
        "fcnt": outcome.fcnt if outcome.fcnt is not None else (frame.fcnt16 if frame else None),
        "fport": frame.fport if frame else None, "device": outcome.device,
        "status": outcome.status, "detail": outcome.detail,
        "points": _points(outcome.decoded) if outcome.decoded else {}}
    if as_json:
        return json.dumps(info)
    pts = " ".join(f"{k}={v['value']}{(' ' + v['unit']) if v.get('unit') else ''}"
                   if isinstance(v, dict) else f"{k}={v!r}" for k, v in info["points"].items())
    return (f"{info['time']} {eui} {packet.freq or '-'}MHz {packet.datr or '-'} "
            f"RSSI {packet.rssi} SNR {packet.lsnr} DevAddr {info['dev_addr'] or '-'} "
            f"FCnt {info['fcnt']} {outcome.device or '-'} {outcome.status.upper()} "
            f"{outcome.detail} {pts}").rstrip()


def standalone_context() -> DriverContext:
    """In-memory frame counters: listening never changes what the daemon has stored."""
    return DriverContext.standalone("listen", "lora_forwarder")
