"""``streetgate ingest run``: one worker, MQTT in, the database out, acks after COMMIT.

paho runs its network loop in its own thread and queues every message; this thread takes
them in groups (up to ``group`` messages, or what arrived within ``linger``), stores a group
in one transaction (:class:`ingest.store.IngestStore`), and only then sends each message's
PUBACK (paho's manual acks, MQTT 5 §4.3.2). A worker killed at any point has acknowledged
only what is committed; the broker sends the rest again when its session resumes.

Several workers share the load through an MQTT 5 shared subscription (``$share/<group>/...``,
MQTT 5 §4.8.2); all their state is in the database, so any worker can take any batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.store import Incoming, IngestStore

if TYPE_CHECKING:
    from pathlib import Path

    from ingest._db import Database

__all__ = ["IngestWorker", "WorkerOptions", "topics"]

_log = logging.getLogger("streetgate.ingest")


def topics(prefix: str, group: str | None) -> list[str]:
    """The worker's subscriptions: batches and command results of every gateway."""
    plain = [f"{prefix}/+/batch", f"{prefix}/+/cmd/result"]
    return [f"$share/{group}/{t}" for t in plain] if group else plain


@dataclass(frozen=True)
class WorkerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "streetgate"
    #: Shared subscription group; None: a plain subscription (one worker).
    group: str | None = None
    #: A stable id keeps the broker session (and what it holds for this worker) across
    #: restarts; empty: a fresh session each time.
    client_id: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    #: Messages per transaction, at most, and how long to wait to fill one (seconds).
    group_size: int = 200
    linger: float = 0.02
    #: The registrar's key directory, imported at start and again when it changes.
    keys_dir: Path | None = None


@dataclass
class WorkerStats:
    received: int = 0
    acked: int = 0
    stored: int = 0
    groups: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class IngestWorker:
    """One worker; :meth:`run` until :meth:`stop` (or ``max_messages``)."""

    def __init__(self, db: Database, options: WorkerOptions) -> None:
        self.store = IngestStore(db)
        self.opt = options
        self.stats = WorkerStats()
        self._inbox: queue.Queue[tuple[int, int, Incoming]] = queue.Queue()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._keys_mtime: float | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=options.client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        if options.username:
            self.client.username_pw_set(options.username, options.password or None)
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._message
        # Redelivered messages arrive in the same order; a reconnect backs off up to 30 s.
        self.client.reconnect_delay_set(1, 30)

    def _connected(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            _log.warning("ingest: broker %s:%s refused the connection: %s", self.opt.host,
                         self.opt.port, rc)
            return
        _log.info("ingest: connected to %s:%s", self.opt.host, self.opt.port)
        client.subscribe([(t, 1) for t in topics(self.opt.prefix, self.opt.group)])

    def _message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.time_ns() // 1_000_000
        self._inbox.put((msg.mid, msg.qos, Incoming(msg.topic, bytes(msg.payload), received)))

    def stop(self) -> None:
        self._stop.set()

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe (blocking, up to ``timeout`` seconds)."""
        self.refresh_keys()
        persistent = bool(self.opt.client_id)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # A named worker keeps its session a day: what it had not acked comes back to it.
        props.SessionExpiryInterval = 86400 if persistent else 0
        self.client.connect(self.opt.host, self.opt.port, keepalive=30,
                            clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"could not subscribe at {self.opt.host}:{self.opt.port}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def refresh_keys(self) -> None:
        """Import the registrar's key directory when its registry changed since last time."""
        directory = self.opt.keys_dir
        if directory is None:
            return
        registry = directory / "registry.json"
        mtime = registry.stat().st_mtime if registry.exists() else 0.0
        if mtime != self._keys_mtime:
            n = self.store.import_key_directory(directory)
            self._keys_mtime = mtime
            _log.info("ingest: %d key(s) from %s", n, directory)

    def _take(self) -> list[tuple[int, int, Incoming]]:
        """The next group: blocks up to 0.5 s for a first message, then ``linger`` for more."""
        try:
            first = self._inbox.get(timeout=0.5)
        except queue.Empty:
            return []
        group = [first]
        deadline = time.monotonic() + self.opt.linger
        while len(group) < self.opt.group_size:
            left = deadline - time.monotonic()
            try:
                group.append(self._inbox.get(timeout=left) if left > 0 else
                             self._inbox.get_nowait())
            except queue.Empty:
                break
        return group

    def run(self, *, max_messages: int = 0, idle_exit: float = 0.0) -> WorkerStats:
        """Store and ack until stopped, ``max_messages`` handled, or ``idle_exit`` seconds
        pass without a message (0: never)."""
        last = time.monotonic()
        next_keys = time.monotonic() + 5.0
        while not self._stop.is_set():
            if max_messages and self.stats.received >= max_messages:
                break
            if time.monotonic() >= next_keys:
                self.refresh_keys()
                next_keys = time.monotonic() + 5.0
            group = self._take()
            if not group:
                if idle_exit and time.monotonic() - last > idle_exit:
                    break
                continue
            last = time.monotonic()
            self._handle(group)
        return self.stats

    def _handle(self, group: list[tuple[int, int, Incoming]]) -> None:
        outcomes = self.store.ingest([m for _mid, _q, m in group])
        # Committed: now, and only now, the broker may forget these messages.
        for mid, qos, _m in group:
            if qos > 0:
                self.client.ack(mid, qos)
        st = self.stats
        st.received += len(group)
        st.acked += len(group)
        st.groups += 1
        for o in outcomes:
            st.stored += o.stored
            st.by_status[o.status] = st.by_status.get(o.status, 0) + 1
