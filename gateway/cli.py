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
from typing import Any, NoReturn

from drivers.api import ConfigError, Duration

__all__ = ["main"]

_CORE = {"run", "check", "key", "buffer", "verify", "demo", "bench", "status", "drivers",
         "new-driver", "hil", "command", "ingest"}


def _command(argv: list[str]) -> str | None:
    """The subcommand: the first word that is not a global option or its value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _hoist_log_level(argv: list[str]) -> list[str]:
    """``--log-level L`` given after the command (before any ``--``) moves in front of it."""
    words = iter(enumerate(argv))
    at = None
    for i, word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            at = i
            break
    if at is None:
        return argv
    moved: list[str] = []
    kept: list[str] = []
    rest = iter(argv[at + 1:])
    for word in rest:
        if word == "--":
            kept += [word, *rest]
        elif word == "--log-level" and (value := next(rest, None)) is not None:
            moved += [word, value]
        elif word.startswith("--log-level="):
            moved.append(word)
        else:
            kept.append(word)
    return moved + argv[:at + 1] + kept


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2, and carry the error priority when stderr is the journal."""

    def error(self, message: str) -> NoReturn:
        from gateway.logs import print_problem  # noqa: PLC0415

        print_problem(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")
        raise SystemExit(2)


def _duration(text: str) -> float:
    try:
        return float(Duration.parse(text))
    except ValueError:
        msg = f'expected a duration such as "500ms", "10s", "2m"; got {text!r}'
        raise argparse.ArgumentTypeError(msg) from None


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="/etc/streetgate/gateway.toml",
                   help="gateway config file (default: %(default)s)")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from gateway import __version__  # noqa: PLC0415

    parser = _Parser(prog="streetgate", description="street-cabinet gateway agent",
                     epilog="exit status: 0 ok; 1 problems found (a device failing, the "
                            "gateway degraded or not running, a check failed); 2 usage or "
                            "config error")
    parser.add_argument("--version", action="version", version=f"streetgate {__version__}")
    parser.add_argument("--log-level", default=None,
                        choices=["debug", "info", "warning", "error"],
                        help="also accepted after the command")
    sub: Any = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _register_run_check(sub)

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
    p.add_argument("--json", action="store_true")
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
    if command not in _CORE:  # a field tool, or help listing every command
        _register_plugins(sub)
    return parser


def _register_run_check(sub: Any) -> None:
    p = sub.add_parser("run", help="run the gateway daemon")
    _config_arg(p)
    dry = p.add_mutually_exclusive_group()
    dry.add_argument("--once", action="store_true",
                     help="poll every configured driver once, print the readings and exit; "
                          "nothing is buffered or sent")
    dry.add_argument("--test", type=_duration, metavar="DURATION",
                     help="like --once, but run the drivers this long (e.g. 30s)")
    p.add_argument("--json", action="store_true", help="with --once/--test: print JSON")
    p.add_argument("--timeout", type=_duration, default=15.0, metavar="DURATION",
                   help="with --once: give up on a driver after this long (default: 15s)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config file and print it resolved, secrets "
                       "masked; then check what run needs (keys, TLS files, identity)")
    p.add_argument("file")
    p.add_argument("--offline", action="store_true",
                   help="only the file: not the state directory's keys, TLS files and identity")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)


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
    if _command(args_list) == "ingest":
        return _ingest(args_list)
    args_list = _hoist_log_level(args_list)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    from gateway.logs import print_problem, setup_logging  # noqa: PLC0415

    setup_logging(args.log_level or "info")
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # so a reader that went away shows here, not at exit
    except ConfigError as exc:
        print_problem(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    return code


def _reader_gone() -> int:
    """stdout's reader went away (``| head``): stop quietly, with the status SIGPIPE gives."""
    import os  # noqa: PLC0415

    # Python flushes stdout again at exit: point it at /dev/null so that flush succeeds.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _ingest(args_list: list[str]) -> int:
    """``streetgate [--log-level L] ingest ...``: the ingest package parses the rest."""
    from gateway._cli_tools import cmd_ingest  # noqa: PLC0415
    from gateway.logs import setup_logging  # noqa: PLC0415

    i = args_list.index("ingest")
    head = args_list[:i]
    level = head[head.index("--log-level") + 1] if "--log-level" in head[:-1] else "info"
    setup_logging(level)
    try:
        return cmd_ingest(args_list[i + 1:])
    except KeyboardInterrupt:
        return 130


# -- commands ---------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from gateway._cli_check import cmd_check as check  # noqa: PLC0415

    return check(args)


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
    if args.once or args.test is not None:
        return _dry_run(args)
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
            from gateway.logs import print_problem  # noqa: PLC0415

            print_problem(f"streetgate: cannot start: {exc}")
            return 1
        raise


def _dry_run(args: argparse.Namespace) -> int:
    """``run --once`` / ``--test``: the drivers alone; no buffer, no broker, no state files."""
    from drivers.registry import load_registry  # noqa: PLC0415
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.dryrun import run_command  # noqa: PLC0415

    registry = load_registry()
    cfg = load_config(args.config, registry)
    text, ok = run_command(cfg, registry, duration=args.test, timeout=args.timeout,
                           as_json=args.json)
    sys.stdout.write(text)
    return 0 if ok else 1


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
        from gateway.logs import print_problem  # noqa: PLC0415

        print_problem(f"streetgate: {exc}")
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
        from gateway.config import lenient_paths  # noqa: PLC0415

        g, buffer, why = lenient_paths(args.config)
        if g is None:
            from gateway.config import load_config  # noqa: PLC0415

            load_config(args.config)  # raises the config error, with every line
            return 2
        if why:
            sys.stderr.write(f"streetgate: note: {why} (the buffer named by its [gateway] "
                             "and [buffer] tables is shown)\n")
        path = g.path(buffer)
    try:
        stats = inspect_buffer(path)
    except StoreError as exc:
        from gateway.logs import print_problem  # noqa: PLC0415

        print_problem(f"streetgate: {exc}")
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


def cmd_drivers(args: argparse.Namespace) -> int:
    """Every driver that loads; then the broken and the refused ones, by name (exit 1)."""
    from drivers.registry import BUILTIN, load_registry  # noqa: PLC0415

    reg = load_registry()
    rows: list[dict[str, Any]] = []
    for name, cls in reg.drivers.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append({"name": name, "state": "ok", "builtin": name in BUILTIN,
                     "class": f"{cls.__module__}.{cls.__qualname__}", "doc": doc})
    rows += [{"name": name, "state": "broken", "why": why} for name, why in reg.broken.items()]
    rows += [{"name": name, "state": "refused", "why": why} for name, why in reg.refused.items()]
    if args.json:
        print(json.dumps({"ok": not (reg.broken or reg.refused), "drivers": rows}))
    else:
        for row in rows:
            if row["state"] == "ok":
                print(f"{row['name']:<16} {row['class']}  {row['doc']}")
            else:
                print(f"{row['name']:<16} {row['state'].upper()}: {row['why']}")
    return 1 if reg.broken or reg.refused else 0
