"""A verifying subscriber: receives batches from a broker and feeds a Verifier."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["BatchSubscriber"]


class BatchSubscriber:
    """paho in its own thread; raw messages land in a queue (``messages``) in arrival order."""

    def __init__(self, host: str, port: int, topic: str, *, client_id: str = "",
                 on_message: Callable[[str, bytes], None] | None = None,
                 username: str = "", password: str = "") -> None:
        self.topic = topic
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed = threading.Event()
        self._on_message = on_message
        # A named client keeps its session (and the broker queues QoS 1 batches for it while
        # it is away); an anonymous one starts clean.
        self.persistent = bool(client_id)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password or None)
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._message
        self.host, self.port = host, port

    def _connected(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if self._on_message is not None:
            self._on_message(msg.topic, payload)
        else:
            self.messages.put((msg.topic, payload))

    def start(self, timeout: float = 10.0) -> None:
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 86400
        self.client.connect(self.host, self.port, keepalive=30, clean_start=not self.persistent,
                            properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"could not subscribe to {self.topic} at {self.host}:{self.port}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
