"""``streetgate registrar run``: the registrar as a long-running MQTT client.

It subscribes to ``P/enroll/+/request`` and ``P/+/rekey/request`` (QoS 1), answers each on the
matching response topic and reconnects by itself (paho's loop, capped backoff). Requests are
handled one at a time on paho's network thread: they are rare and each is a few milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from provisioning import _protocol
from provisioning._tlserrors import explain_reason_code

if TYPE_CHECKING:
    import ssl

    from provisioning.registrar import Registrar

__all__ = ["BrokerLogin", "RegistrarService"]

_log = logging.getLogger("streetgate.registrar")


@dataclasses.dataclass(frozen=True)
class BrokerLogin:
    """How the registrar reaches the broker."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = "streetgate-registrar"
    protocol: int = 5


class RegistrarService:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`ready` is set once subscribed."""

    def __init__(self, registrar: Registrar, login: BrokerLogin, *, prefix: str = "streetgate"
                 ) -> None:
        self.registrar = registrar
        self.login = login
        self.prefix = prefix
        self.ready = threading.Event()
        self.handled = 0
        self._stopping = False
        v5 = login.protocol == 5
        kwargs: dict[str, Any] = {} if v5 else {"clean_session": True}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=login.client_id,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kwargs)
        if login.tls is not None:
            self.client.tls_set_context(login.tls)
        if login.username is not None:
            self.client.username_pw_set(login.username, login.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    @property
    def topics(self) -> list[str]:
        return [f"{self.prefix}/enroll/+/request", f"{self.prefix}/+/rekey/request"]

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            _log.error("broker refused the registrar: %s", explain_reason_code(rc.value))
            return
        _log.info("registrar connected to %s:%d", self.login.host, self.login.port)
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        refused = [t for t, rc in zip(self.topics, codes, strict=False) if rc.is_failure]
        if refused:
            _log.error("broker refused the registrar's subscriptions %s: check its ACL", refused)
            return
        _log.info("registrar ready: answering on %s", ", ".join(self.topics))
        self.ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.ready.clear()
        if not self._stopping:
            _log.warning("registrar disconnected (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = _protocol.parse_request_topic(self.prefix, msg.topic)
        if parsed is None:
            return
        kind, gateway_id = parsed
        response = self.registrar.respond(kind, gateway_id, bytes(msg.payload))
        self.handled += 1
        if response is None:
            return
        topics = (_protocol.claim_topics if kind == "claim" else _protocol.rekey_topics)(
            self.prefix, gateway_id)
        client.publish(topics[1], _protocol.encode(response), qos=1)

    def start(self, timeout: float = 10.0) -> None:
        """Connect (blocking) and run the network loop on its own thread."""
        self.client.connect(self.login.host, self.login.port, keepalive=30)
        self.client.loop_start()
        if not self.ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"registrar not subscribed within {timeout}s; see the log")

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def run_forever(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT)."""
        self.client.connect_async(self.login.host, self.login.port, keepalive=30)
        self.client.loop_start()
        try:
            stop.wait()
        finally:
            self.stop()
