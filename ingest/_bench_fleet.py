"""The bench's simulated gateways: one process drives a share of the fleet.

Every gateway's batches are encoded and signed before the run (real ``encode_batch`` and
``sign1``, each with its own increasing ``batch_seq`` and seq range), so the run itself only
publishes bytes. All the process's MQTT clients share one thread: paho's external-loop API
(``loop_read``/``loop_write``/``loop_misc``) on one selector, one socket per gateway.

A gateway publishes each batch when it falls due (QoS 1), keeps it until the broker's
PUBACK, and when the connection drops (the reconnect storm) it reconnects with capped
exponential backoff and full jitter, then sends again, in order, everything not
acknowledged and everything that fell due meanwhile: what a real gateway's buffer does.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import random
import selectors
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway.batch import encode_batch
from gateway.cose import kid_for, sign1

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["FleetSpec", "fleet_key", "gateway_name", "run_fleet"]

_POINTS = 10  # points per gateway, polled in lockstep
_BACKOFF_MIN, _BACKOFF_MAX = 0.25, 2.0  # reconnect backoff (s), full jitter
_CONNECT_SPREAD = 1.0  # first connects spread over this many seconds


@dataclass(frozen=True)
class FleetSpec:
    """What one fleet process plays (everything picklable)."""

    run_id: str
    host: str
    port: int
    prefix: str
    gateways: int  # in the whole fleet
    mine: tuple[int, ...]  # the gateway numbers this process plays
    keys: int  # in the whole fleet: key j belongs to gateway j % gateways
    epoch: int
    batch_readings: int
    interval: float  # seconds between a gateway's batches
    seconds: float  # how long batches fall due
    base_ms: int  # readings' timestamps start about here
    drain: float  # after the last batch fell due, wait this long for PUBACKs at most
    #: Seconds after the start when every gateway's connection drops at once (0: never).
    drop_at: float = 0.0


def gateway_name(run_id: str, g: int) -> str:
    return f"bench-{run_id}-{g:05d}"


def fleet_key(run_id: str, j: int) -> Ed25519PrivateKey:
    """Key ``j`` of the run's fleet: derived, so every process makes the same one."""
    seed = hashlib.sha256(f"streetgate-bench:{run_id}:{j}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def batches_per_gateway(spec: FleetSpec) -> int:
    return max(1, int(spec.seconds / spec.interval))


def _pool(spec: FleetSpec, g: int) -> list[bytes]:
    """Gateway ``g``'s batches, signed in turn by each of its keys (rotation)."""
    name = gateway_name(spec.run_id, g)
    keys = [fleet_key(spec.run_id, j) for j in range(g, spec.keys, spec.gateways)]
    kids = [kid_for(k.public_key()) for k in keys]
    points = [f"meter-1/p{i}" for i in range(min(_POINTS, spec.batch_readings))]
    per = len(points)
    cycles = spec.batch_readings // per
    step_ms = max(1, int(spec.interval * 1000 / cycles))
    out: list[bytes] = []
    seq = 0
    for b in range(batches_per_gateway(spec)):
        t = spec.base_ms + int(b * spec.interval * 1000)
        rows = []
        for c in range(cycles):
            ts = t + c * step_ms
            for p in points:
                seq += 1
                rows.append((seq, p, "V", ts, 230.0 + (seq % 97) / 10, 0))
        payload = encode_batch(gateway_id=name, epoch=spec.epoch, batch_seq=b + 1, rows=rows)
        out.append(sign1(payload, keys[b % len(keys)], kids[b % len(kids)]))
    return out


@dataclass
class _Gateway:
    number: int
    name: str
    topic: str
    pool: list[bytes]
    phase: float
    client: mqtt.Client | None = None
    connected: bool = False
    retry_at: float = 0.0
    backoff: float = _BACKOFF_MIN
    due: int = 0  # batches fallen due so far
    waiting: list[int] = field(default_factory=list)  # fallen due, not yet published
    unacked: dict[int, int] = field(default_factory=dict)  # mid -> batch index
    acked: int = 0
    first_sent_ms: list[int] = field(default_factory=list)
    disconnects: int = 0
    resent: int = 0
    reconnected_ms: int = 0


class _Fleet:
    """One selector, many gateways."""

    def __init__(self, spec: FleetSpec, pools: dict[int, list[bytes]]) -> None:
        self.spec = spec
        self.sel = selectors.DefaultSelector()
        rng = random.Random(spec.run_id)
        self.gws = [_Gateway(g, gateway_name(spec.run_id, g),
                             f"{spec.prefix}/{gateway_name(spec.run_id, g)}/batch", pools[g],
                             phase=rng.uniform(0, spec.interval)) for g in spec.mine]
        for gw in self.gws:
            gw.first_sent_ms = [0] * len(gw.pool)
        self.rng = rng
        self.connect_failures = 0
        self.dropped_ms = 0
        self.dropping: set[int] = set()  # gateways to drop in the storm, by index
        self.down = set(range(len(self.gws)))  # gateways without a client, by index
        self._index = {gw.number: k for k, gw in enumerate(self.gws)}

    # -- connections ---------------------------------------------------------------------
    def _client(self, gw: _Gateway) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gw.name, protocol=mqtt.MQTTv5,
                        userdata=gw)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_socket_open = lambda _c, _u, sock: self._watch(sock, _c, write=False, new=True)
        c.on_socket_close = self._socket_closed
        c.on_socket_register_write = lambda _c, _u, sock: self._watch(sock, _c, write=True)
        c.on_socket_unregister_write = lambda _c, _u, sock: self._watch(sock, _c, write=False)
        return c

    def _watch(self, sock: Any, client: mqtt.Client, *, write: bool, new: bool = False) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        # paho reports a closing socket's last write state after its close: ignore that.
        with contextlib.suppress(KeyError, ValueError):
            if new:
                self.sel.register(sock, events, client)
            else:
                self.sel.modify(sock, events, client)

    def _socket_closed(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def connect(self, gw: _Gateway) -> None:
        self.down.discard(self._index[gw.number])
        gw.client = self._client(gw)
        try:
            gw.client.connect(self.spec.host, self.spec.port, keepalive=30)
        except OSError:
            self.connect_failures += 1
            self._lost(gw)

    def _lost(self, gw: _Gateway) -> None:
        """The connection is gone: what it had not acknowledged is sent again, in order."""
        if gw.client is not None:
            sock = gw.client.socket()
            if sock is not None:
                self._socket_closed(gw.client, gw, sock)
        gw.client = None
        self.down.add(self._index[gw.number])
        if gw.connected:
            gw.disconnects += 1
        gw.connected = False
        again = sorted(gw.unacked.values())
        gw.resent += len(again)
        gw.waiting = sorted({*again, *gw.waiting})
        gw.unacked.clear()
        gw.retry_at = time.monotonic() + self.rng.uniform(0, gw.backoff)
        gw.backoff = min(_BACKOFF_MAX, gw.backoff * 2)

    def _on_connect(self, _c: mqtt.Client, gw: _Gateway, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        gw.connected = True
        gw.backoff = _BACKOFF_MIN
        if gw.disconnects:
            gw.reconnected_ms = time.time_ns() // 1_000_000
        self._flush(gw)

    def _on_disconnect(self, _c: mqtt.Client, gw: _Gateway, *_a: Any) -> None:
        if gw.client is _c:
            self._lost(gw)

    def _on_publish(self, _c: mqtt.Client, gw: _Gateway, mid: int, *_a: Any) -> None:
        if gw.client is _c and gw.unacked.pop(mid, None) is not None:
            gw.acked += 1

    # -- publishing ----------------------------------------------------------------------
    def _flush(self, gw: _Gateway) -> None:
        if not gw.connected or gw.client is None:
            return
        now_ms = time.time_ns() // 1_000_000
        for i in gw.waiting:
            info = gw.client.publish(gw.topic, gw.pool[i], qos=1)
            gw.unacked[info.mid] = i  # under its mid before any PUBACK can be read
            if not gw.first_sent_ms[i]:
                gw.first_sent_ms[i] = now_ms
        gw.waiting = []

    def _done(self) -> bool:
        return all(gw.acked >= len(gw.pool) and not gw.unacked and not gw.waiting
                   for gw in self.gws)

    def run(self, start_wall: float) -> None:
        t0 = time.monotonic() + (start_wall - time.time())
        for i, gw in enumerate(self.gws):
            # The fleet's first connects are spread out, as gateways switched on together.
            gw.retry_at = time.monotonic() + _CONNECT_SPREAD * i / max(1, len(self.gws))
        heap = [(t0 + gw.phase, k) for k, gw in enumerate(self.gws)]
        heapq.heapify(heap)
        end = t0 + self.spec.seconds + self.spec.drain
        drop = t0 + self.spec.drop_at if self.spec.drop_at else None
        next_misc = 0.0
        while time.monotonic() < end:
            now = time.monotonic()
            if drop is not None and now >= drop:
                drop = self._storm(drop, now)
            self._publish_due(heap, t0, now)
            for k in [k for k in self.down if self.gws[k].retry_at <= now]:
                self.connect(self.gws[k])
            if not heap and self._done():
                break
            self._poll(min(0.05, max(0.0, heap[0][0] - now)) if heap else 0.05)
            if now >= next_misc:
                for gw in self.gws:
                    if gw.client is not None:
                        gw.client.loop_misc()  # keepalive
                next_misc = now + 1.0

    def _storm(self, drop: float, now: float) -> float | None:
        """Each gateway drops right after its next publish (its PUBACK never comes);
        whoever has not published within one interval drops then. None: the storm is over."""
        if not self.dropped_ms:
            self.dropped_ms = time.time_ns() // 1_000_000
            self.dropping = {k for k in range(len(self.gws)) if k not in self.down}
        if now < drop + self.spec.interval:
            return drop
        for k in list(self.dropping):
            self._drop(k)
        return None

    def _publish_due(self, heap: list[tuple[float, int]], t0: float, now: float) -> None:
        while heap and heap[0][0] <= now:
            _t, k = heapq.heappop(heap)
            gw = self.gws[k]
            gw.waiting.append(gw.due)
            gw.due += 1
            self._flush(gw)
            if k in self.dropping:
                self._drop(k)
            if gw.due < len(gw.pool):
                heapq.heappush(heap, (t0 + gw.phase + gw.due * self.spec.interval, k))

    def _drop(self, k: int) -> None:
        """Gateway ``k``'s connection gone, as when the network between cabinets and broker
        resets: what it wrote goes out, then the socket just closes (no DISCONNECT)."""
        self.dropping.discard(k)
        gw = self.gws[k]
        if gw.client is None:
            return
        gw.client.loop_write()
        sock = gw.client.socket() if gw.client is not None else None
        if sock is not None:
            self._socket_closed(gw.client, gw, sock)
            with contextlib.suppress(OSError):
                sock.close()
        if gw.client is not None:
            self._lost(gw)

    def _poll(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            c: mqtt.Client = key.data
            rc = mqtt.MQTT_ERR_SUCCESS
            if mask & selectors.EVENT_READ:
                rc = c.loop_read()
            if mask & selectors.EVENT_WRITE and rc == mqtt.MQTT_ERR_SUCCESS:
                rc = c.loop_write()
            gw: _Gateway = c.user_data_get()
            if rc != mqtt.MQTT_ERR_SUCCESS and gw.client is c:
                self._lost(gw)

    def close(self) -> None:
        for gw in self.gws:
            if gw.client is not None:
                with contextlib.suppress(OSError):
                    gw.client.disconnect()
                    gw.client.loop_write()
        self.sel.close()

    def report(self) -> dict[str, Any]:
        per = {gw.name: {"published": sum(1 for t in gw.first_sent_ms if t),
                         "readings": sum(1 for t in gw.first_sent_ms if t)
                         * self.spec.batch_readings,
                         "unacked": len(gw.unacked) + len(gw.waiting),
                         "sent_ms": gw.first_sent_ms, "disconnects": gw.disconnects,
                         "resent": gw.resent, "reconnected_ms": gw.reconnected_ms}
               for gw in self.gws}
        return {"gateways": per, "connect_failures": self.connect_failures,
                "dropped_ms": self.dropped_ms}


def run_fleet(spec: FleetSpec, conn: Connection) -> None:
    """A fleet process: encode, say ready, wait for the start time, play, report."""
    t = time.monotonic()
    pools = {g: _pool(spec, g) for g in spec.mine}
    conn.send(("ready", {"encode_s": round(time.monotonic() - t, 2),
                         "batches": sum(map(len, pools.values()))}))
    command, start_wall = conn.recv()
    if command != "start":
        return
    fleet = _Fleet(spec, pools)
    try:
        fleet.run(start_wall)
        conn.send(("done", fleet.report()))
    finally:
        fleet.close()
