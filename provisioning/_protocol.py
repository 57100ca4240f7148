"""The enrollment wire protocol between a gateway and ``streetgate registrar``.

Topics (``P`` is the topic prefix, ``G`` the gateway id)::

    P/enroll/G/request    gateway -> registrar   claim: token + CSR + signing public key
    P/enroll/G/response   registrar -> gateway   certificate, or an error
    P/G/rekey/request     gateway -> registrar   rotation over mutual TLS: CSR and/or key
    P/G/rekey/response    registrar -> gateway

A claim is authenticated by its single-use token; a rekey by the broker: only the holder of
G's certificate may write below ``P/G/`` (ACL ``pattern write P/%u/#``). Payloads are JSON
objects with ``"v": 1`` and a random ``nonce`` the response echoes, so a gateway ignores
answers meant for an earlier or a forged request. QoS 1 both ways; works over MQTT 5 and 3.1.1.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

__all__ = ["VERSION", "ProtocolError", "claim_topics", "decode", "encode", "new_nonce",
           "parse_request_topic", "rekey_topics"]

VERSION = 1


class ProtocolError(Exception):
    """A message that does not follow the enrollment protocol."""


def claim_topics(prefix: str, gateway_id: str) -> tuple[str, str]:
    """(request, response) topics of the claim flow."""
    return f"{prefix}/enroll/{gateway_id}/request", f"{prefix}/enroll/{gateway_id}/response"


def rekey_topics(prefix: str, gateway_id: str) -> tuple[str, str]:
    """(request, response) topics of rotation over mutual TLS."""
    return f"{prefix}/{gateway_id}/rekey/request", f"{prefix}/{gateway_id}/rekey/response"


def parse_request_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``("claim" | "rekey", gateway id)`` for a request topic, else ``None``."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) != 3 or parts[2] != "request":
        return None
    if parts[0] == "enroll":
        return "claim", parts[1]
    if parts[1] == "rekey":
        return "rekey", parts[0]
    return None


def new_nonce() -> str:
    return secrets.token_hex(16)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode()


def decode(payload: bytes, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parse one message; every ``required`` field must be a non-empty string."""
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise ProtocolError(f"expected a JSON object with v={VERSION}")
    for name in ("nonce", *required):
        if not isinstance(data.get(name), str) or not data[name]:
            raise ProtocolError(f"field {name!r} missing or not a string")
    return data
