"""The MQTT uplink: paho-mqtt driven from the asyncio loop, PUBACKs matched to leases.

paho's socket callbacks hand its socket to the event loop (add_reader / add_writer), so every
paho callback runs on the loop thread; only the blocking TCP+TLS connect runs in an executor.
Each connection is a fresh paho client: whatever was in flight when a connection dropped is
released back to the buffer and re-sent in new batches, never replayed by paho from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.api import Backoff
from gateway._mqtt_errors import UplinkError, describe_connect_failure, describe_reason
from gateway.config import UplinkConfig

__all__ = ["TlsFiles", "Uplink", "UplinkError"]

_log = logging.getLogger("streetgate.uplink")
#: A connection up this long counts as recovered: its next failure warns again.
_STABLE_S = 30.0
#: Bytes of a PUBLISH besides the payload: fixed header, topic, packet id, properties.
_PUBLISH_OVERHEAD = 128
#: How long the broker keeps a commanded gateway's session (and its queued commands): a day.
_SESSION_EXPIRY = 86400


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str
    cert_file: str | None
    key_file: str | None


class Uplink:
    """One logical MQTT session to the platform, reconnecting forever with jittered backoff."""

    def __init__(
        self,
        cfg: UplinkConfig,
        *,
        gateway_id: str,
        client_id: str,
        on_ack: Callable[[Any], None],
        on_lost: Callable[[Any], None],
        status: Callable[[], dict[str, Any]],
        tls: TlsFiles | None = None,
        on_command: Callable[[bytes, Callable[[], None]], None] | None = None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.client_id = client_id
        self.topic_batch = f"{cfg.topic_prefix}/{gateway_id}/batch"
        self.topic_status = f"{cfg.topic_prefix}/{gateway_id}/status"
        self.topic_cmd = f"{cfg.topic_prefix}/{gateway_id}/cmd"
        self.topic_result = f"{cfg.topic_prefix}/{gateway_id}/cmd/result"
        self._on_command = on_command
        self._on_connected = on_connected
        self._side: dict[int, Callable[[], None]] = {}
        self._on_ack = on_ack
        self._on_lost = on_lost
        self._status = status
        self._tls = tls
        self._client: mqtt.Client | None = None
        self._inflight: dict[int, Any] = {}
        self._connected = asyncio.Event()
        self._window = asyncio.Event()
        self._window.set()
        self._lost = asyncio.Event()
        self._misc: asyncio.Task[None] | None = None
        self.broker_max_packet: int | None = None
        self.state = "disconnected"
        self.last_error: str | None = None
        self._warned: str | None = None
        self._announced = False
        self._connected_at: float | None = None
        self.counters = {"connects": 0, "disconnects": 0, "published": 0, "acked": 0,
                         "rejected": 0, "bytes": 0}

    # -- public -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def max_payload(self) -> int:
        limit = int(self.cfg.max_packet_size)
        if self.broker_max_packet:
            limit = min(limit, self.broker_max_packet)
        return limit - _PUBLISH_OVERHEAD - len(self.topic_batch)

    async def wait_ready(self) -> None:
        """Wait until connected with room in the in-flight window."""
        while True:
            await self._connected.wait()
            if len(self._inflight) < self.cfg.max_inflight:
                return
            self._window.clear()
            await self._window.wait()

    def publish(self, payload: bytes, token: Any) -> bool:
        """Publish a batch at QoS 1; ``token`` comes back through on_ack or on_lost."""
        client = self._client
        if client is None or not self.connected:
            return False
        # The token is registered under the mid before the loop can run again, so even an
        # immediate PUBACK finds it (STYLE §9).
        info = client.publish(self.topic_batch, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            _log.debug("publish refused locally: %s", mqtt.error_string(info.rc))
            return False
        self._inflight[info.mid] = token
        self.counters["published"] += 1
        self.counters["bytes"] += len(payload)
        return True

    def publish_result(self, payload: bytes, on_ack: Callable[[], None]) -> bool:
        """Publish a command result at QoS 1; ``on_ack`` runs when the broker has it. A result
        whose PUBACK is lost is published again from the buffer after the next connect."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(self.topic_result, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self._side[info.mid] = on_ack
        return True

    def publish_status(self) -> None:
        client = self._client
        if client is None or not self.connected:
            return
        body = json.dumps(self._status(), separators=(",", ":"), default=str)
        client.publish(self.topic_status, body, qos=1, retain=True)

    async def run(self) -> None:
        """Connect, stay connected, reconnect; returns only when cancelled."""
        backoff = Backoff(float(self.cfg.reconnect_min), float(self.cfg.reconnect_max))
        while True:
            try:
                await self._connect_once()
            except UplinkError as exc:
                self._note_failure(str(exc))
                await asyncio.sleep(backoff.next_delay() + float(self.cfg.reconnect_min) / 2)
                continue
            backoff.reset()
            await self._lost.wait()
            self._teardown()
            await asyncio.sleep(backoff.next_delay() + float(self.cfg.reconnect_min) / 2)

    async def close(self, timeout: float = 2.0) -> None:
        """Say offline (retained), disconnect cleanly and drop the socket."""
        client = self._client
        if client is not None and self.connected:
            offline = json.dumps({"state": "offline", "gateway": self.gateway_id, "clean": True})
            info = client.publish(self.topic_status, offline, qos=1, retain=True)
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(timeout):
                    while not info.is_published() and self.connected:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
            client.disconnect()
        self._teardown()

    # -- connection ------------------------------------------------------------------------
    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            client = self._make_client(loop)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # e.g. the CA or key file is being replaced right now: retried, not fatal
            raise UplinkError(f"TLS setup: {self._explain(exc)}") from exc
        self._client = client
        self._lost.clear()
        self.state = "connecting"
        props = None
        # With commands, the broker keeps the session (and the commands published while the
        # gateway was away) for a day; without, every connection starts clean.
        keep = self._on_command is not None
        if self.cfg.protocol == "mqtt5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = _SESSION_EXPIRY if keep else 0
        try:
            # Blocking: DNS, TCP connect and the TLS handshake (why it runs in an executor).
            await loop.run_in_executor(None, lambda: client.connect(
                self.cfg.host, self.cfg.port, keepalive=round(self.cfg.keepalive),
                clean_start=(not keep) if props is not None
                else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props))
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._teardown()
            raise UplinkError(self._explain(exc)) from exc
        self._misc = loop.create_task(self._misc_loop(client), name="streetgate.uplink.misc")
        try:
            async with asyncio.timeout(max(10.0, float(self.cfg.keepalive))):
                while not self.connected:
                    if self._lost.is_set():
                        raise UplinkError(self.last_error or "connection refused")  # noqa: TRY301
                    await asyncio.sleep(0.01)
        except TimeoutError:
            self._teardown()
            raise UplinkError("no CONNACK from broker within the timeout") from None
        except UplinkError:
            self._teardown()
            raise

    def _make_client(self, loop: asyncio.AbstractEventLoop) -> mqtt.Client:
        proto = mqtt.MQTTv5 if self.cfg.protocol == "mqtt5" else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=proto, reconnect_on_failure=False,
                             clean_session=(self._on_command is None)
                             if proto == mqtt.MQTTv311 else None,
                             # A command's PUBACK goes once it is recorded (gateway/commander.py)
                             manual_ack=self._on_command is not None)
        client.max_inflight_messages_set(self.cfg.max_inflight + 2)
        client.max_queued_messages_set(0)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password or None)
        will = json.dumps({"state": "offline", "gateway": self.gateway_id, "clean": False})
        client.will_set(self.topic_status, will, qos=1, retain=True)
        if self._tls is not None:
            client.tls_set_context(self._tls_context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message

        def register_write(c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.call_soon_threadsafe(_add_writer, loop, sock, c)

        def unregister_write(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.call_soon_threadsafe(_remove_writer, loop, sock)

        def opened(c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.call_soon_threadsafe(_add_reader, loop, sock, c)

        def closed(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            loop.call_soon_threadsafe(_remove_reader, loop, sock)

        client.on_socket_open = opened
        client.on_socket_close = closed
        client.on_socket_register_write = register_write
        client.on_socket_unregister_write = unregister_write
        return client

    def _tls_context(self) -> ssl.SSLContext:
        from provisioning._tlserrors import harden  # noqa: PLC0415 - only with TLS

        assert self._tls is not None  # noqa: S101 - only called when TLS is configured
        ctx = harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self._tls.ca_file))
        if self._tls.cert_file and self._tls.key_file:
            # TLS 1.2 keeps the broker's verdict on our certificate inside the handshake, so
            # an expired, revoked or foreign-CA certificate is reported as such (TLS 1.3 lets
            # the client finish first and the broker merely closes the connection).
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self._tls.cert_file, self._tls.key_file)
        return ctx

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, ssl.SSLError) and self._tls is not None and self._tls.cert_file:
            from provisioning import TlsPaths, explain_tls_failure  # noqa: PLC0415 - only with TLS

            paths = TlsPaths(Path(self._tls.ca_file), Path(self._tls.cert_file),
                             Path(self._tls.key_file or ""))
            return f"{self.cfg.host}:{self.cfg.port}: {explain_tls_failure(exc, paths)}"
        return describe_connect_failure(exc, self.cfg.host, self.cfg.port)

    async def _misc_loop(self, client: mqtt.Client) -> None:
        while client is self._client:
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost.set()
                return
            await asyncio.sleep(1.0)

    def _teardown(self) -> None:
        """Forget the client; hand every in-flight token back to the buffer."""
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        client, self._client = self._client, None
        if client is not None:
            sock = client.socket()
            if sock is not None:
                loop = asyncio.get_running_loop()
                _remove_reader(loop, sock)
                _remove_writer(loop, sock)
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_read()  # lets paho notice and close its socket
        if self._connected.is_set():
            self._connected.clear()
            self.counters["disconnects"] += 1
        self.state = "disconnected"
        self._side.clear()
        lost, self._inflight = self._inflight, {}
        for token in lost.values():
            self._on_lost(token)
        self._window.set()

    def _note_failure(self, message: str) -> None:
        # Warn once per kind of failure; a link that flaps (connects, then drops at once)
        # does not warn again until it has stayed up for a while (STYLE §8).
        stable = (self._connected_at is not None
                  and time.monotonic() - self._connected_at > _STABLE_S)
        if message != self._warned or stable:
            _log.warning("uplink to %s:%d failing: %s", self.cfg.host, self.cfg.port, message)
            self._warned = message
            self._announced = False
        else:
            _log.debug("uplink still failing: %s", message)
        self.counters["failures"] = self.counters.get("failures", 0) + 1
        self.last_error = message
        self.state = "disconnected"
        self._connected_at = None

    # -- paho callbacks (all on the loop thread) ---------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, props: Any) -> None:
        if client is not self._client:
            return
        if rc.is_failure:
            self.last_error = describe_reason("connect", rc)
            self._lost.set()
            return
        self.broker_max_packet = getattr(props, "MaximumPacketSize", None) if props else None
        self.counters["connects"] += 1
        self.state = "connected"
        if self._warned is None:
            _log.info("uplink connected to %s:%d", self.cfg.host, self.cfg.port)
        elif not self._announced:
            _log.info("uplink connected to %s:%d after: %s", self.cfg.host, self.cfg.port,
                      self._warned)
            self._announced = True
        else:
            _log.debug("uplink connected again to %s:%d", self.cfg.host, self.cfg.port)
        self._connected_at = time.monotonic()
        self.last_error = None
        self._connected.set()
        if self._on_command is not None:
            client.subscribe(self.topic_cmd, qos=1)
        self.publish_status()
        if self._on_connected is not None:
            self._on_connected()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if client is not self._client:
            return
        if self.connected:
            self._note_failure(describe_reason("disconnected", rc))
        self._lost.set()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: Any) -> None:
        if client is not self._client or self._on_command is None:
            return
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if client is self._client and qos:
                client.ack(mid, qos)

        if msg.topic == self.topic_cmd:
            self._on_command(bytes(msg.payload), ack)
        else:
            ack()

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if client is not self._client:
            return
        side = self._side.pop(mid, None)
        if side is not None:
            if not rc.is_failure:
                side()
            return
        token = self._inflight.pop(mid, None)
        if token is None:
            return
        if rc.is_failure:
            # QoS 1 PUBACK with a failure reason (e.g. 0x87 not authorized, 0x95 too large):
            # the broker did not take it; keep the readings (MQTT 5 §3.4.2.1).
            self.counters["rejected"] += 1
            self._note_failure(describe_reason("publish", rc))
            self._on_lost(token)
        else:
            self.counters["acked"] += 1
            self._on_ack(token)
        self._window.set()


def _add_reader(loop: asyncio.AbstractEventLoop, sock: Any, client: mqtt.Client) -> None:
    if sock.fileno() >= 0:
        loop.add_reader(sock, client.loop_read)


def _remove_reader(loop: asyncio.AbstractEventLoop, sock: Any) -> None:
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(sock)


def _add_writer(loop: asyncio.AbstractEventLoop, sock: Any, client: mqtt.Client) -> None:
    if sock.fileno() >= 0:
        loop.add_writer(sock, client.loop_write)


def _remove_writer(loop: asyncio.AbstractEventLoop, sock: Any) -> None:
    with contextlib.suppress(ValueError, OSError):
        loop.remove_writer(sock)
