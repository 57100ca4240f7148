"""Test-side names for the private broker, plus a unique topic helper."""

from __future__ import annotations

import uuid

from gateway.broker import Mosquitto, free_port

__all__ = ["Mosquitto", "free_port", "unique_topic"]


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
