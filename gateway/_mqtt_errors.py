"""paho-mqtt failures mapped to our words in one place (STYLE §7).

    OSError (refused, unreachable, DNS)  ─┐
    ssl.SSLError (handshake, cert)       ─┼─► UplinkError("<what>: <why>")   connect failures
    CONNACK reason code (MQTT 5 §3.2.2.2) ─┘
    PUBACK reason code  (MQTT 5 §3.4.2.1) ──► UplinkError("[code:N] …")       batch kept, retried
    DISCONNECT reason / socket error      ──► state "disconnected", in-flight released
"""

from __future__ import annotations

import errno
import ssl
from typing import Any

__all__ = ["UplinkError", "describe_connect_failure", "describe_reason"]


class UplinkError(Exception):
    """The uplink cannot reach or use the broker right now; the buffer keeps everything."""


def describe_reason(what: str, rc: Any) -> str:
    """``rc`` is a paho ReasonCode (MQTT 5) or an int-like (3.1.1)."""
    value = getattr(rc, "value", rc)
    name = getattr(rc, "getName", lambda: str(rc))()
    hints = {
        0x86: "bad user name or password",
        0x87: "not authorized (check the broker ACL for this gateway's topics)",
        0x95: "packet too large for the broker",
        0x97: "quota exceeded",
        0x8C: "bad authentication method",
        0x88: "server unavailable",
    }
    hint = hints.get(int(value)) if isinstance(value, int) else None
    return f"{what}: [code:{value}] {name}" + (f" - {hint}" if hint and hint != name else "")


def describe_connect_failure(exc: BaseException, host: str, port: int) -> str:
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: broker certificate not trusted at {where}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE_EXPIRED" in reason.upper():
            return f"TLS: our client certificate has expired ({where} refused it)"
        if "REVOKED" in reason.upper():
            return f"TLS: our client certificate is revoked ({where} refused it)"
        if "UNKNOWN_CA" in reason.upper():
            return f"TLS: {where} does not trust our certificate's CA"
        return f"TLS handshake with {where} failed: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (is the broker running?)"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"network unreachable: {where}"
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {where}"
    return f"cannot connect to {where}: {exc}"
