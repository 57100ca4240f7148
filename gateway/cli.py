"""The ``streetgate`` command."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from drivers.api import ConfigError

__all__ = ["main"]

_CORE = {"run", "check", "key", "buffer", "verify", "demo", "bench", "status", "drivers",
         "new-driver", "hil", "command", "-h", "--help", "--version"}


def _command(argv: list[str]) -> str | None:
    """The subcommand: the first word that is not a global option or its value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="/etc/streetgate/gateway.toml",
                   help="gateway config file (default: %(default)s)")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from gateway import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="streetgate",
                                     description="street-cabinet gateway agent")
    parser.add_argument("--version", action="version", version=f"streetgate {__version__}")
    parser.add_argument("--log-level", default=None,
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run the gateway daemon")
    _config_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config file and print it resolved, secrets masked")
    p.add_argument("file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("key", help="the gateway's signing key")
    ksub = p.add_subparsers(dest="key_command", required=True)
    kp = ksub.add_parser("public", help="print the public key as PEM")
    _config_arg(kp)
    kp.add_argument("--key", help="private key file (instead of the config's)")
    kp.set_defaults(func=cmd_key_public)
    kf = ksub.add_parser("fingerprint", help="print the key id (kid) batches carry")
    _config_arg(kf)
    kf.add_argument("--key", help="private key file (instead of the config's)")
    kf.set_defaults(func=cmd_key_fingerprint)

    p = sub.add_parser("buffer", help="inspect the buffer")
    bsub = p.add_subparsers(dest="buffer_command", required=True)
    bp = bsub.add_parser("stats", help="depth, oldest reading age, file size, drops")
    _config_arg(bp)
    bp.add_argument("--db", help="buffer file (instead of the config's)")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_buffer_stats)

    p = sub.add_parser("drivers", help="list registered drivers")
    p.set_defaults(func=cmd_drivers)

    command = _command(argv)
    if command == "run":
        # The daemon lives for months: the tools' imports (XML reports, archives, dates)
        # would stay resident in it all that time.
        return parser
    from gateway import _cli_tools  # noqa: PLC0415

    _cli_tools.register(sub)
    from gateway import command_cli  # noqa: PLC0415

    command_cli.register(sub)
    from gateway.hil import register_cli as register_hil  # noqa: PLC0415

    register_hil(sub)
    from gateway.status import register_cli as register_status  # noqa: PLC0415

    register_status(sub)
    if not argv or argv[0] not in _CORE:
        _register_plugins(sub)
    return parser


def _register_plugins(sub: Any) -> None:
    from drivers.registry import load_registry  # noqa: PLC0415

    sim = sub.add_parser("sim", help="run a device simulator").add_subparsers(
        dest="sim_command", metavar="DRIVER")
    sim.required = True
    for name, cls in load_registry().drivers.items():
        try:
            cls.register_cli(sim, sub)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break the CLI
            logging.getLogger("streetgate").warning("driver %s: CLI unavailable: %s", name, exc)
    try:
        from provisioning.cli import register_cli  # noqa: PLC0415
    except ImportError:
        return
    register_cli(sub)


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    from gateway.logs import setup_logging  # noqa: PLC0415

    setup_logging(args.log_level or "info")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# -- commands ---------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from gateway._toml import dumps  # noqa: PLC0415
    from gateway.config import check_fragment, load_config, resolved  # noqa: PLC0415

    fragment = check_fragment(args.file)
    if fragment is not None:
        print(f"# {args.file}: driver sections OK ({len(fragment)} instance(s); "
              "no [gateway] section, so checked as a fragment)")
        print(dumps({"drivers": fragment}), end="")
        return 0
    cfg = load_config(args.file)
    print(f"# {args.file}: OK ({len(cfg.drivers)} driver instance(s))")
    print(dumps(resolved(cfg)), end="")
    return 0


def _lean_malloc() -> None:
    """glibc: one malloc arena for every thread, and blocks of 128 KiB and more always from
    mmap, so they go back to the system when freed. Its defaults (an arena per thread, up to
    8 per core; a threshold that rises after each large free) held ~1 MB more at the bench's
    peak, for no measurable speed. Settings in the environment win (mallopt(3))."""
    import ctypes  # noqa: PLC0415 - gateway.clock loads it anyway
    import os  # noqa: PLC0415

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
    except (ValueError, OSError):
        return  # not glibc (musl, ...): nothing to tune
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return
    mallopt = ctypes.CDLL(None).mallopt
    m_mmap_threshold, m_arena_max = -3, -8  # glibc malloc/malloc.h
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(m_arena_max, 1)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(m_mmap_threshold, 128 * 1024)


def _quiet_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    Readings are tuples, and tuples are tracked by the collector: at full speed the daemon makes
    hundreds of thousands a second, each living until its group commit. With the default
    thresholds that triggers a collection every 700 allocations and, as readings survive into
    the older generations, frequent full collections over every object of the process. What
    the daemon imported and built at start is frozen out of collection, and a young collection
    runs every 20,000 allocations; reference counting still frees readings at once (they hold
    no cycles), and the collector still runs for the rare cycle.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def cmd_run(args: argparse.Namespace) -> int:
    _lean_malloc()
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.daemon import Gateway  # noqa: PLC0415
    from gateway.logs import setup_logging  # noqa: PLC0415

    cfg = load_config(args.config)
    if args.log_level is None:
        setup_logging(cfg.gateway.log_level)
    # systemd's watchdog kills a hung gateway with SIGABRT: every thread's stack goes to the log.
    faulthandler.enable()
    _quiet_gc()

    async def go() -> int:
        gw = Gateway(cfg)
        gw.config_path = args.config
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, gw.stop)
        loop.add_signal_handler(signal.SIGINT, gw.stop)
        reloads: set[asyncio.Task[bool]] = set()

        def hup() -> None:
            task = loop.create_task(gw.reload(args.config), name="streetgate.reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hup)
        return await gw.run()

    try:
        return asyncio.run(go())
    except Exception as exc:
        from gateway.daemon import AlreadyRunningError  # noqa: PLC0415
        from provisioning.keys import KeyFileError  # noqa: PLC0415

        if isinstance(exc, KeyFileError | AlreadyRunningError | OSError | ValueError):
            print(f"streetgate: cannot start: {exc}", file=sys.stderr)
            return 1
        raise


def _signing_key(args: argparse.Namespace) -> Any:
    from provisioning.keys import KeyFileError, load_or_create_signing_key  # noqa: PLC0415

    if args.key:
        path = Path(args.key)
        if not path.is_file():  # an explicit path is never created: a typo must not mint a key
            msg = f"no key at {path}"
            raise KeyFileError(msg)
    else:
        from gateway.config import load_config  # noqa: PLC0415

        cfg = load_config(args.config)
        path = cfg.gateway.path(cfg.gateway.signing_key)
    return load_or_create_signing_key(path)


def _show_key(args: argparse.Namespace, show: Any) -> int:
    from provisioning.keys import KeyFileError  # noqa: PLC0415

    try:
        key = _signing_key(args)
    except KeyFileError as exc:
        print(f"streetgate: {exc}", file=sys.stderr)
        return 1
    print(show(key.public_key()), end="")
    return 0


def cmd_key_public(args: argparse.Namespace) -> int:
    from provisioning.keys import public_key_pem  # noqa: PLC0415

    return _show_key(args, public_key_pem)


def cmd_key_fingerprint(args: argparse.Namespace) -> int:
    from provisioning.keys import fingerprint  # noqa: PLC0415

    return _show_key(args, lambda pub: fingerprint(pub) + "\n")


def cmd_buffer_stats(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from buffer.inspect import inspect_buffer  # noqa: PLC0415
    from buffer.store import StoreError  # noqa: PLC0415

    if args.db:
        path = Path(args.db)
    else:
        from gateway.config import load_config  # noqa: PLC0415

        cfg = load_config(args.config)
        path = cfg.gateway.path(cfg.buffer.path)
    try:
        stats = inspect_buffer(path)
    except StoreError as exc:
        print(f"streetgate: {exc}", file=sys.stderr)
        return 1
    oldest = stats.get("oldest_ts")
    stats["oldest_age_s"] = round(time.time() - oldest / 1000, 1) if oldest else None
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"buffer {path}")
    for key in ("depth", "oldest_age_s", "file_bytes", "dropped", "gaps_pending",
                "losses_pending", "clean_stop", "last_seq", "epoch", "schema_version"):
        print(f"  {key:<15} {stats[key]}")
    return 0


def cmd_drivers(_args: argparse.Namespace) -> int:
    from drivers.registry import load_registry  # noqa: PLC0415

    reg = load_registry()
    for name, cls in reg.drivers.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<16} {cls.__module__}.{cls.__qualname__}  {doc}")
    for name, why in reg.broken.items():
        print(f"{name:<16} BROKEN: {why}")
    return 1 if reg.broken else 0
