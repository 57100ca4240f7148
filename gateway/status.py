"""Health: the status document, its file for `streetgate status`, and its console rendering.

One document serves three readers: the retained MQTT message on ``<prefix>/<id>/status``, the
status file a technician reads with ``streetgate status`` (no secrets in it; mode 0644), and the
one-line STATUS= systemd shows in ``systemctl status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Mapping

__all__ = ["StatusReporter", "build_status", "healthy", "read_status", "register_cli", "render",
           "status_path", "summary", "uplink_view", "write_status_file"]

#: Where the unit's RuntimeDirectory= puts the status file (tmpfs: no SD-card wear).
RUNTIME_DIR = Path("/run/streetgate")
DEFAULT_STATE_DIR = Path("/var/lib/streetgate")
DEFAULT_CONFIG = "/etc/streetgate/gateway.toml"
#: A status file older than this was not written by a running daemon (it rewrites it every 2 s).
STALE_AFTER = 60.0


def _buffer_view(stats: Any, now: float) -> dict[str, Any]:
    if stats is None:
        return {}
    is_dc = dataclasses.is_dataclass(stats) and not isinstance(stats, type)
    data = dataclasses.asdict(stats) if is_dc else dict(stats)
    oldest = data.get("oldest_ts")
    keep = ("depth", "pending", "leased", "oldest_ts", "file_bytes", "max_bytes", "dropped",
            "gaps_pending", "delivered", "epoch", "moved_aside", "disk_full", "free_bytes",
            "losses_pending", "acks_pending")
    out = {k: data[k] for k in keep if k in data}
    out["oldest_age_s"] = round(max(0.0, now - oldest / 1000), 1) if oldest else None
    return out


def uplink_view(up: Any) -> dict[str, Any]:
    """What status shows of an :class:`gateway.uplink.Uplink` (or None when not started)."""
    if up is None:
        return {"state": "stopped"}
    return {"state": up.state, "inflight": up.inflight, "last_error": up.last_error,
            **dict(up.counters)}


def _driver_view(snap: Mapping[str, Any], kind: str | None) -> dict[str, Any]:
    """``{driver, ok, failing: [device], degraded: [condition], health: snapshot()}``."""
    devices = snap.get("devices", {})
    failing = sorted(n for n, d in devices.items() if d.get("state") != "ok")
    degraded = sorted(snap.get("degraded", {}))
    return {"driver": kind, "ok": not failing, "failing": failing, "degraded": degraded,
            "health": dict(snap)}


def _devices(view: Mapping[str, Any]) -> dict[str, Any]:
    return dict(view.get("health", {}).get("devices", {}))


def build_status(*, gateway_id: str, version: str, boot_id: str, started: float,
                 drivers: Mapping[str, Mapping[str, Any]], buffer: Any = None,
                 uplink: Mapping[str, Any] | None = None, clock: Mapping[str, Any] | None = None,
                 driver_kinds: Mapping[str, str] | None = None,
                 counters: Mapping[str, int] | None = None, now: float | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The status document (JSON-ready) from what the daemon knows.

    ``drivers`` maps instance to ``HealthBoard.snapshot()``; ``buffer`` is a ``StoreStats`` (or
    its dict); ``started`` and ``now`` are wall-clock seconds. Extra keywords are added as-is.
    """
    now = time.time() if now is None else now
    views = {inst: _driver_view(snap, (driver_kinds or {}).get(inst))
             for inst, snap in sorted(drivers.items())}
    buf = _buffer_view(buffer, now)
    up = dict(uplink or {"state": "stopped"})
    problems = [f"{inst}/{dev} failing" for inst, v in views.items() for dev in v["failing"]]
    problems += [f"{inst} degraded ({', '.join(v['degraded'])})" for inst, v in views.items()
                 if v["degraded"]]
    if up.get("state") != "connected":
        problems.append(f"uplink {up.get('state')}")
    if clock is not None and not clock.get("synced", True):
        problems.append("clock not synchronized")
    if buf.get("dropped"):
        problems.append(f"{buf['dropped']} readings dropped")
    if buf.get("disk_full"):
        problems.append(f"buffer disk full ({_mb(buf.get('free_bytes'))} free)")
    if extra.get("buffer_error"):
        problems.append(f"buffer writes failing: {extra['buffer_error']}")
    doc: dict[str, Any] = {
        "state": "online", "gateway": gateway_id, "version": version, "boot_id": boot_id,
        "pid": os.getpid(), "generated_at": round(now, 3), "started": round(started, 3),
        "uptime_s": round(max(0.0, now - started), 1),
        "health": "ok" if not problems else "degraded", "problems": problems,
        "uplink": up, "buffer": buf,
        "drops": {"buffer": buf.get("dropped", 0), "gaps_pending": buf.get("gaps_pending", 0)},
        "clock": dict(clock or {}), "drivers": views, "counters": dict(counters or {}),
    }
    doc.update(extra)
    return doc


def summary(doc: Mapping[str, Any]) -> str:
    """One line for systemd's STATUS=: uplink, buffer, devices, clock."""
    buf = doc.get("buffer", {})
    devices = [d for v in doc.get("drivers", {}).values() for d in _devices(v).values()]
    ok = sum(1 for d in devices if d.get("state") == "ok")
    age = buf.get("oldest_age_s")
    parts = [f"uplink {doc.get('uplink', {}).get('state', '?')}",
             f"buffer {buf.get('depth', 0)}" + (f" (oldest {_age(age)})" if age else ""),
             f"devices {ok}/{len(devices)} ok"]
    if not doc.get("clock", {}).get("synced", True):
        parts.append("clock NOT synchronized")
    if doc.get("drops", {}).get("buffer"):
        parts.append(f"dropped {doc['drops']['buffer']}")
    return "; ".join(parts)


# -- the file ------------------------------------------------------------------------------------
def status_path(name: str = "status.json", *, state_dir: str | Path = DEFAULT_STATE_DIR,
                runtime_dir: str | Path | None = None) -> Path:
    """Where the daemon writes the file: absolute ``name``, else the runtime dir, else state_dir."""
    if Path(name).is_absolute():
        return Path(name)
    runtime = runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime or state_dir) / name


def write_status_file(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically (temp file + rename); world-readable, it holds no secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)
            json.dump(doc, f, separators=(",", ":"), default=str)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


def read_status(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise TypeError(f"{path}: not a status document")
    return doc


# -- the console ---------------------------------------------------------------------------------
def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            rest = s % size
            sub = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return f"{s // size}{unit}" + (f" {rest // sub[1]}{sub[0]}" if rest // sub[1] else "")
    return f"{s}s"


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    clock = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
    return f"{_age(now - ts)} (since {clock})"


def _mb(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _header(doc: Mapping[str, Any], now: float) -> list[str]:
    if doc.get("state") != "online":
        clean = doc.get("clean", "?")
        return [f"streetgate {doc.get('gateway', '?')}  OFFLINE (stopped cleanly: {clean})"]
    head = (f"streetgate {doc['gateway']}  v{doc.get('version', '?')}  "
            f"up {_age(doc.get('uptime_s'))}  pid {doc.get('pid', '?')}")
    lines = [head]
    stale = now - float(doc.get("generated_at", now))
    if stale > STALE_AFTER:
        lines.append(f"!! status is {_age(stale)} old: is the service running? "
                     "(systemctl status streetgate)")
    problems = doc.get("problems", [])
    lines.append("health   " + ("OK" if not problems else "DEGRADED: " + "; ".join(problems)))
    return lines


def _uplink_lines(up: Mapping[str, Any]) -> list[str]:
    line = (f"uplink   {up.get('state', '?')}  inflight {up.get('inflight', 0)}  "
            f"published {up.get('published', 0)}  acked {up.get('acked', 0)}")
    out = [line]
    if up.get("last_error"):
        out.append(f"         last error: {up['last_error']}")
    return out


def _buffer_lines(buf: Mapping[str, Any]) -> list[str]:
    if not buf:
        return ["buffer   -"]
    line = (f"buffer   {buf.get('depth', 0)} readings, oldest {_age(buf.get('oldest_age_s'))} "
            f"ago  {_mb(buf.get('file_bytes'))}/{_mb(buf.get('max_bytes'))}  "
            f"dropped {buf.get('dropped', 0)}  gaps pending {buf.get('gaps_pending', 0)}")
    free = buf.get("free_bytes")
    if free is not None and free >= 0 and not buf.get("disk_full"):
        line += f"  free {_mb(free)}"
    out = [line]
    if buf.get("disk_full"):
        out.append(f"         DISK FULL: {_mb(free)} free; readings wait in memory "
                   f"({buf.get('pending', 0)} queued), acknowledged batches waiting to be "
                   f"deleted: {buf.get('acks_pending', 0)}")
    if buf.get("losses_pending"):
        out.append(f"         loss records waiting to go upstream: {buf['losses_pending']}")
    if buf.get("moved_aside"):
        out.append(f"         corrupt file moved aside: {buf['moved_aside']}")
    return out


def _clock_line(clock: Mapping[str, Any]) -> str:
    if not clock:
        return "clock    -"
    if clock.get("synced"):
        line = f"clock    synchronized ({clock.get('source', '?')})"
        if clock.get("corrections_pending"):
            line += f"  corrections not yet delivered: {clock['corrections_pending']}"
        return line
    return (f"clock    NOT SYNCHRONIZED ({clock.get('source', '?')}): readings since seq "
            f"{clock.get('unsynced_since_seq')} are marked and corrected once it syncs")


def _wrapped(head: str, items: list[str], width: int = 100) -> list[str]:
    """``head`` then the items, two spaces apart, continued under the first item."""
    lines = [head]
    for item in items:
        if len(lines[-1]) + 2 + len(item) > width and lines[-1].strip():
            lines.append(" " * len(head))
        lines[-1] += "  " + item
    return lines


def _udp_line(udp: Mapping[str, Any]) -> str:
    """The socket's receive buffer and the datagrams the kernel dropped on it."""
    asked = udp.get("rcvbuf_requested")
    drops = f"kernel drops {udp.get('drops', 0)}" if udp.get("source") else "drops unknown"
    return (f"    {'udp socket':<24} rcvbuf {udp.get('rcvbuf', '-')} B "
            f"({'asked ' + str(asked) if asked else 'system default'})  {drops}")


def _driver_lines(drivers: Mapping[str, Any], now: float) -> list[str]:
    out = ["drivers" if drivers else "drivers  none"]
    for inst, d in drivers.items():
        state = "OK" if d.get("ok") else f"FAILING ({len(d.get('failing', []))})"
        state += "  DEGRADED" if d.get("degraded") else ""
        devices = _devices(d)
        health = d.get("health", {})
        out.append(f"  {d.get('driver') or '?'}:{inst:<20} {state}  {len(devices)} device(s)")
        for name, dev in sorted(devices.items()):
            if dev.get("state") == "ok":
                out.append(f"    {name:<24} ok")
            else:
                out.append(f"    {name:<24} FAILING for {_when(dev.get('failing_since'), now)}")
                out.append(f"    {'':<24} last error: {dev.get('last_error')}")
        for cond, entry in sorted(health.get("degraded", {}).items()):
            out.append(f"    {cond:<24} DEGRADED for {_when(entry.get('since'), now)}")
            out.append(f"    {'':<24} {entry.get('reason')}")
        if isinstance(health.get("udp"), dict):
            out.append(_udp_line(health["udp"]))
        counters = [f"{k} {v}" for k, v in sorted(health.get("counters", {}).items()) if v]
        if counters:
            out += _wrapped(f"    {'counters':<24}", counters)
    return out


def render(doc: Mapping[str, Any], *, now: float | None = None) -> str:
    """The status on one screen, for a technician at the cabinet."""
    now = time.time() if now is None else now
    lines = _header(doc, now)
    if doc.get("state") == "online":
        lines += _uplink_lines(doc.get("uplink", {}))
        lines += _buffer_lines(doc.get("buffer", {}))
        lines.append(_clock_line(doc.get("clock", {})))
        lines += _driver_lines(doc.get("drivers", {}), now)
        lines += _command_lines(doc.get("commands"), now)
        if doc.get("reload_error"):
            lines.append(f"config   last reload REJECTED, running the previous config: "
                         f"{doc['reload_error']}")
        # The kid batches carry now: after `provision rotate --signing` and a reload, the new one.
        lines.append(f"signing  kid {doc.get('kid') or '?'}")
    return "\n".join(lines) + "\n"


def _command_lines(cmds: Mapping[str, Any] | None, now: float) -> list[str]:
    """Pending commands and the last few results (``[commands]`` configured)."""
    if not cmds:
        return []
    pending = cmds.get("pending", [])
    counts = ", ".join(f"{cmds.get(k, 0)} {k}" for k in ("done", "rejected", "failed",
                                                           "expired"))
    lines = [f"commands {len(pending)} pending; {counts}"]
    lines += [f"         waiting: {cid}" for cid in pending[:5]]
    for r in list(cmds.get("recent", []))[-5:]:
        why = f" ({r['reason']})" if r.get("reason") else ""
        value = f" = {r['value']!r}" if r.get("value") is not None else ""
        lines.append(f"         {_age(now - r.get('at', now))} ago  {r.get('id', '?')[:12]}  "
                     f"{r.get('status')}{why}{value}")
    return lines


# -- the loop ------------------------------------------------------------------------------------
def _fingerprint(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    devices = tuple(sorted((i, n, d.get("state")) for i, v in doc.get("drivers", {}).items()
                           for n, d in _devices(v).items()))
    degraded = tuple((i, tuple(v.get("degraded", ()))) for i, v in
                     sorted(doc.get("drivers", {}).items()))
    dropped = bool(doc.get("drops", {}).get("buffer"))
    return (doc.get("uplink", {}).get("state"), doc.get("clock", {}).get("synced"),
            tuple(sorted(doc.get("drivers", {}))), devices, degraded, dropped)


class StatusReporter:
    """Rebuilds the document every ``poll`` s; writes the file, publishes on change and interval.

    ``publish`` (the retained MQTT message) runs when a device, driver, uplink or clock state
    changes (at most once per ``poll``) and every ``interval``; ``on_summary`` gets the one-line
    summary whenever it differs (give it ``Notifier.status``).
    """

    def __init__(self, build: Callable[[], Awaitable[dict[str, Any]]], *,
                 publish: Callable[[dict[str, Any]], None] | None = None,
                 path: Path | None = None, interval: float = 60.0, poll: float = 2.0,
                 on_summary: Callable[[str], object] | None = None) -> None:
        self._build = build
        self._publish = publish
        self.path = path
        self.interval = interval
        self.poll = poll
        self._on_summary = on_summary
        self.current: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._fp: tuple[Any, ...] | None = None
        self._published = float("-inf")
        self._summary = ""
        self.file_errors = 0

    def changed(self) -> None:
        """Something changed (reload, clock sync): refresh now rather than at the next poll."""
        self._wake.set()

    async def step(self) -> None:
        doc = await self._build()
        self.current = doc
        if self.path is not None:
            try:
                write_status_file(self.path, doc)
            except OSError:
                self.file_errors += 1
        fp = _fingerprint(doc)
        now = time.monotonic()
        if fp != self._fp or now - self._published >= self.interval:
            self._fp, self._published = fp, now
            if self._publish is not None:
                self._publish(doc)
        line = summary(doc)
        if line != self._summary and self._on_summary is not None:
            self._summary = line
            self._on_summary(line)

    async def run(self) -> None:
        while True:
            await self.step()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()


# -- the command ---------------------------------------------------------------------------------
def register_cli(sub: Any) -> None:
    """Add ``streetgate status [-c CONFIG | --file PATH] [--json]``."""
    p = sub.add_parser("status", help="the gateway's health, as the running daemon sees it")
    p.add_argument("--config", "-c", default=None,
                   help=f"gateway config, to find the status file (default: {DEFAULT_CONFIG})")
    p.add_argument("--file", help="read this status file")
    p.add_argument("--json", action="store_true", help="print the document as JSON")
    p.set_defaults(func=cmd_status)


def _candidates(args: argparse.Namespace) -> list[Path]:
    if args.file:
        return [Path(args.file)]
    name, state_dir = "status.json", DEFAULT_STATE_DIR
    config = args.config or DEFAULT_CONFIG
    from gateway.config import lenient_paths  # noqa: PLC0415 - only when a config is read

    g, _buffer, why = lenient_paths(config)
    if g is not None:
        name, state_dir = g.status_socket, Path(g.state_dir)
    if why and args.config and not getattr(args, "_warned", False):
        # The daemon keeps running its previous config; the status is still worth showing.
        sys.stderr.write(f"streetgate: note: {why} (a running daemon keeps its previous "
                         "config; its status follows)\n")
        args._warned = True  # noqa: SLF001
    return [status_path(name, runtime_dir=RUNTIME_DIR), status_path(name, state_dir=state_dir,
                                                                    runtime_dir="")]


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when the gateway runs healthy; 1 when it is offline, degraded or not running."""
    found = [p for p in dict.fromkeys(_candidates(args)) if p.exists()]
    if not found:
        where = " or ".join(str(p) for p in _candidates(args))
        sys.stderr.write(f"streetgate: no status file at {where}: is the gateway running? "
                         "(systemctl status streetgate)\n")
        return 1
    path = max(found, key=lambda p: p.stat().st_mtime)
    try:
        doc = read_status(path)
    except (OSError, ValueError, TypeError) as exc:
        sys.stderr.write(f"streetgate: cannot read {path}: {exc}\n")
        return 1
    try:
        text = json.dumps(doc, indent=2) + "\n" if args.json else render(doc)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        sys.stderr.write(f"streetgate: {path} is not a streetgate status document "
                         f"({type(exc).__name__}: {exc})\n")
        return 1
    sys.stdout.write(text)
    return 0 if healthy(doc) else 1


def healthy(doc: Mapping[str, Any], *, now: float | None = None) -> bool:
    """Online, no problems, and fresh: what ``streetgate status`` exits 0 for."""
    now = time.time() if now is None else now
    fresh = now - float(doc.get("generated_at", 0)) <= STALE_AFTER
    return doc.get("state") == "online" and doc.get("health") == "ok" and fresh
