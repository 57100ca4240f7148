"""A verifying subscriber: receives batches from a broker and feeds a Verifier."""

from __future__ import annotations

import queue
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["BatchSubscriber", "SubscribeError"]


class SubscribeError(ConnectionError):
    """The subscriber could not connect or subscribe; the message names the cause (the TLS
    error, the broker's reason code, or the silence it timed out on)."""


class BatchSubscriber:
    """paho in its own thread; raw messages land in a queue (``messages``) in arrival order.

    ``tls`` is the context for a TLS listener (with a client certificate loaded for mutual
    TLS); ``username``/``password`` log in on a password listener.
    """

    def __init__(self, host: str, port: int, topic: str, *, client_id: str = "",
                 on_message: Callable[[str, bytes], None] | None = None,
                 username: str = "", password: str = "",
                 tls: ssl.SSLContext | None = None) -> None:
        self.topic = topic
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed = threading.Event()
        self._settled = threading.Event()  # subscribed, or failed before it
        self._failure: str | None = None
        self._last_error: str | None = None
        self._on_message = on_message
        # A named client keeps its session (and the broker queues QoS 1 batches for it while
        # it is away); an anonymous one starts clean.
        self.persistent = bool(client_id)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password or None)
        self.tls = tls
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = self._connected
        self.client.on_subscribe = self._subscribe_done
        self.client.on_disconnect = self._disconnected
        self.client.on_log = self._logged
        self.client.on_message = self._message
        self.host, self.port = host, port

    def _connected(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)
        else:
            self._fail(f"the broker refused the connection: {rc}")

    def _subscribe_done(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[Any],
                        _p: Any) -> None:
        refused = [c for c in codes if getattr(c, "is_failure", False)]
        if refused:  # SUBACK reason codes, MQTT 5.0 §3.9.3
            self._fail(f"the broker refused the subscription to {self.topic}: {refused[0]}")
            return
        # paho formats a log line per packet while on_log is set: only needed until here.
        self.client.on_log = None
        self._subscribed.set()
        self._settled.set()

    def _disconnected(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self._subscribed.is_set():
            return  # paho reconnects and resubscribes by itself
        cause = f": {self._last_error}" if self._last_error else f" ({rc})"
        if self.tls is None:
            hint = ("; a TLS listener spoken to without TLS closes like this: give the "
                    "broker's CA (and a client certificate for mutual TLS)")
        else:
            hint = "; a mutual-TLS listener closes like this when it rejects the certificate"
        self._fail(f"the broker closed the connection before answering CONNECT{cause}{hint}")

    def _logged(self, _c: mqtt.Client, _u: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_error = text

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why
        self._settled.set()

    def _message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if self._on_message is not None:
            self._on_message(msg.topic, payload)
        else:
            self.messages.put((msg.topic, payload))

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; raise :class:`SubscribeError` saying why within ``timeout``."""
        where = f"{self.host}:{self.port}"
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 86400
        self.client.connect_timeout = timeout  # TCP connect and TLS handshake each
        try:
            self.client.connect(self.host, self.port, keepalive=30,
                                clean_start=not self.persistent, properties=props)
        except ssl.SSLError as exc:
            raise SubscribeError(f"{where}: TLS handshake failed: {_ssl_text(exc)}") from exc
        except OSError as exc:
            raise SubscribeError(f"{where}: cannot connect: {exc}") from exc
        self.client.loop_start()
        if not self._settled.wait(timeout) or self._failure is not None:
            why = self._failure or (f"connected, but no CONNACK and SUBACK for {self.topic} "
                                    f"within {timeout:g}s")
            self.stop()
            raise SubscribeError(f"{where}: {why}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _ssl_text(exc: ssl.SSLError) -> str:
    """The OpenSSL reason (``SSLV3_ALERT_HANDSHAKE_FAILURE``, ``CERTIFICATE_VERIFY_FAILED``)
    and its detail, as one line."""
    detail = getattr(exc, "verify_message", None) or exc.strerror or str(exc)
    return f"{exc.reason}: {detail}" if exc.reason else detail
