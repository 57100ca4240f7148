"""``streetgate command``: the platform's end of commands (send, wait for the result)."""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.api import Duration
from gateway.command import (
    Command,
    CommandFormatError,
    Result,
    decode_result,
    open_result,
    sign_command,
    signature_ref,
)
from gateway.cose import VerifyError

if TYPE_CHECKING:
    from drivers.api import Value

__all__ = ["parse_value", "register", "send_command"]


def parse_value(text: str) -> Value:
    """``true``/``false``, an int, a number, ``null``; anything else is text."""
    low = text.strip().lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    if low == "null":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT; got {text!r}")
    return host.strip("[]"), int(port)


def _load_key(path: str) -> Any:
    from provisioning.keys import KeyFileError, load_or_create_signing_key  # noqa: PLC0415

    p = Path(path)
    if not p.exists():
        raise SystemExit(f"{path}: no such key file (make one with "
                         "`streetgate registrar command-key --out FILE`)")
    try:
        return load_or_create_signing_key(p)
    except KeyFileError as exc:
        raise SystemExit(str(exc)) from None


def _gateway_keys(path: str | None) -> dict[bytes, Any] | None:
    if not path:
        return None
    from provisioning.keys import load_public_keys  # noqa: PLC0415

    return load_public_keys([Path(path)])


def send_command(cmd: Command, key: Any, *, host: str, port: int, prefix: str = "streetgate",
                 wait: float | None = None, gateway_keys: dict[bytes, Any] | None = None,
                 ) -> tuple[bytes, Result | None, list[Result]]:
    """Publish ``cmd`` (QoS 1); with ``wait``, collect its results until the final one.

    Returns (the signed message, the final result or None, every result seen). With
    ``gateway_keys`` only results signed by the gateway count.
    """
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415

    message = sign_command(cmd, key)
    ref = signature_ref(message)
    base = f"{prefix}/{cmd.gateway}/cmd"
    sub = None
    if wait is not None:
        sub = BatchSubscriber(host, port, f"{base}/result")
        sub.start()
    seen: list[Result] = []
    try:
        info = _publish(host, port, base, message)
        if not info:
            raise SystemExit(f"the broker at {host}:{port} did not take the command")
        if sub is None:
            return message, None, seen
        deadline = time.monotonic() + wait  # type: ignore[operator]
        while time.monotonic() < deadline:
            try:
                _topic, payload = sub.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            res = _result(payload, gateway_keys)
            # The ref names this exact message; a message the gateway could not verify is
            # answered with id "?" (its id is not trusted either).
            if res is None or res.ref != ref or res.id not in (cmd.id, "?"):
                continue
            seen.append(res)
            if res.final:
                return message, res, seen
        return message, None, seen
    finally:
        if sub is not None:
            sub.stop()


def _result(payload: bytes, keys: dict[bytes, Any] | None) -> Result | None:
    try:
        if keys is not None:
            return open_result(payload, keys)
        from gateway.cose import strict_loads  # noqa: PLC0415

        item = strict_loads(payload, what="COSE_Sign1", allow_tags=True)
        return decode_result(item.value[2])
    except (VerifyError, CommandFormatError, ValueError, AttributeError, IndexError,
            TypeError):
        return None


def _publish(host: str, port: int, topic: str, message: bytes) -> bool:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise SystemExit(f"cannot reach the broker at {host}:{port}: {exc}") from None
    client.loop_start()
    try:
        info = client.publish(topic, message, qos=1)
        info.wait_for_publish(10.0)
        return info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _show(cmd: Command, final: Result | None, seen: list[Result], *, as_json: bool,
          elapsed: float) -> int:
    if as_json:
        doc = {"id": cmd.id, "gateway": cmd.gateway, "command": cmd.describe(),
               "results": [_plain(r) for r in seen],
               "final": _plain(final) if final else None}
        _out(json.dumps(doc, default=str))
    elif final is None:
        waited = ", ".join(r.status for r in seen) or "nothing"
        _out(f"{cmd.gateway} {cmd.describe()}: no final result within the wait "
              f"(saw: {waited}); command id {cmd.id}")
    else:
        extra = f" (read back {final.value!r})" if final.status == "done" and \
            final.value is not None else ""
        why = f": {final.reason}" if final.reason else ""
        detail = f" - {final.detail}" if final.detail else ""
        code = f" [code {final.code}]" if final.code is not None else ""
        _out(f"{cmd.gateway} {cmd.describe()}: {final.status}{why}{extra}{code}{detail} "
              f"[{elapsed:.2f} s, id {cmd.id}]")
    return 0 if final is not None and final.status == "done" else 1


def _plain(r: Result) -> dict[str, Any]:
    return {"status": r.status, "point": r.point, "value": r.value, "reason": r.reason,
            "detail": r.detail, "code": r.code, "ts": r.ts}


def _make(args: argparse.Namespace, **what: Any) -> Command:
    now = time.time_ns() // 1_000_000
    ttl = Duration.parse(args.ttl) if isinstance(args.ttl, str) else Duration(args.ttl)
    return Command(gateway=args.gateway, id=args.id or uuid.uuid4().hex, issued=now,
                   expires=now + round(float(ttl) * 1000), **what)


def _run(args: argparse.Namespace, cmd: Command) -> int:
    key = _load_key(args.key)
    host, port = args.broker
    if args.wait and not args.gateway_key:
        sys.stderr.write("streetgate command: results are not checked against the gateway's "
                         "key; give --gateway-key PEM to trust only results it signed\n")
    t0 = time.monotonic()
    try:
        wait = float(Duration.parse(args.wait_for)) if args.wait else None
    except ValueError as exc:
        raise SystemExit(f"--wait-for: {exc}") from None
    _message, final, seen = send_command(cmd, key, host=host, port=port, prefix=args.prefix,
                                         wait=wait, gateway_keys=_gateway_keys(args.gateway_key))
    if wait is None:
        _out(f"sent {cmd.describe()} to {cmd.gateway} (id {cmd.id}); --wait shows the result")
        return 0
    return _show(cmd, final, seen, as_json=args.json, elapsed=time.monotonic() - t0)


def cmd_send(args: argparse.Namespace) -> int:
    value = args.value if args.string else parse_value(args.value)
    return _run(args, _make(args, point=args.point, value=value))


def cmd_action(args: argparse.Namespace) -> int:
    return _run(args, _make(args, action=args.name))


def cmd_config(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_bytes()
    except OSError as exc:
        raise SystemExit(f"{args.file}: {exc}") from None
    return _run(args, _make(args, config=text))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("command", help="platform side: send a signed command to a gateway")
    cmds = p.add_subparsers(dest="command_command", metavar="COMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--key", required=True, help="platform command key (PEM, 0600)")
        q.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883),
                       metavar="HOST:PORT")
        q.add_argument("--gateway", required=True, help="gateway id")
        q.add_argument("--prefix", default="streetgate", help="topic prefix")
        q.add_argument("--ttl", default="60s", help="validity (e.g. 60s, 10m, 1h)")
        q.add_argument("--id", help="command id (default: a random one)")
        q.add_argument("--wait", action="store_true", help="wait for the final result")
        q.add_argument("--wait-for", default="180s",
                       help="how long --wait waits (longer than the cabinet's config_rollback "
                            "for `command config`)")
        q.add_argument("--gateway-key", metavar="PEM",
                       help="the gateway's public key: only results it signed count")
        q.add_argument("--json", action="store_true")

    q = cmds.add_parser("send", help="write VALUE to POINT (exit 0 only on done)")
    common(q)
    q.add_argument("point")
    q.add_argument("value", help="true/false, a number, null, or text")
    q.add_argument("--string", action="store_true", help="send VALUE as text as it is")
    q.set_defaults(func=cmd_send)
    q = cmds.add_parser("action", help="run a named action of the cabinet's [commands]")
    common(q)
    q.add_argument("name")
    q.set_defaults(func=cmd_action)
    q = cmds.add_parser("config", help="replace the gateway's config file (rolled back if "
                        "invalid or if the uplink does not come back)")
    common(q)
    q.add_argument("file")
    q.set_defaults(func=cmd_config)
