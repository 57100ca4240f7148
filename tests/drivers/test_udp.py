"""drivers._udp: SO_RCVBUF and the kernel's receive drops, over real loopback UDP sockets."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import pytest

from drivers._udp import proc_drops, rmem_max
from drivers.api import HealthBoard, UdpDrops, set_rcvbuf

FLOOD = 20_000
#: SOCK_MIN_RCVBUF (include/net/sock.h): the kernel never goes below it.
SOCK_MIN_RCVBUF = 2304


def effective(asked: int) -> int:
    """What Linux gives for SO_RCVBUF = asked (socket(7)): twice the request, capped."""
    cap = rmem_max()
    assert cap is not None, "these tests need Linux /proc/sys/net/core/rmem_max"
    return max(2 * min(asked, cap), SOCK_MIN_RCVBUF)


@contextlib.contextmanager
def udp_pair(host: str = "127.0.0.1",
             family: socket.AddressFamily = socket.AF_INET) -> Iterator[tuple[socket.socket,
                                                                              socket.socket]]:
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((host, 0))
        tx.connect(rx.getsockname()[:2])
        yield rx, tx


def flood(tx: socket.socket, n: int = FLOOD) -> None:
    """n junk datagrams, back to back: far more than a tiny receive buffer holds."""
    for i in range(n):
        tx.send(b"junk %d" % i)


def drain(rx: socket.socket, drops: UdpDrops | None = None) -> int:
    """Read what the kernel kept (with SO_RXQ_OVFL ancillary data when ``drops`` is given)."""
    rx.setblocking(False)
    got = 0
    for _ in range(FLOOD + 1):  # bounded: never more than was sent
        try:
            _, anc, _, _ = rx.recvmsg(64, UdpDrops.ANCBUFSIZE)
        except BlockingIOError:
            break
        got += 1
        if drops is not None:
            drops.ancillary(anc)
    return got


def board() -> HealthBoard:
    return HealthBoard(logging.getLogger("streetgate.driver.test.udp"))


def test_rcvbuf_is_doubled_and_capped_by_rmem_max() -> None:
    with udp_pair() as (rx, _):
        assert set_rcvbuf(rx, 65536) == effective(65536)
        assert set_rcvbuf(rx, 1024**3) == effective(1024**3)
        health = board()
        drops = UdpDrops(health, logging.getLogger("t"), rcvbuf=8192)
        drops.attach(rx, "test")
        assert rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == effective(8192)
        assert health.snapshot()["udp"]["rcvbuf"] == effective(8192)
        assert health.snapshot()["udp"]["rcvbuf_requested"] == 8192
        assert health.snapshot()["udp"]["rmem_max"] == rmem_max()


def test_flood_is_counted_degrades_once_and_recovers_once(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    health = board()
    drops = UdpDrops(health, health._log, rcvbuf=4096, recover_after=30.0,
                     clock=lambda: now[0])
    with udp_pair() as (rx, tx), caplog.at_level(logging.DEBUG):
        drops.attach(rx, "127.0.0.1:test")
        assert drops.poll()
        assert health.snapshot()["state"] == "ok"
        flood(tx)
        assert drops.poll()
        first = health.counters["udp_drops"]
        assert first > 0
        kernel = proc_drops(rx)
        assert kernel is not None
        assert first == kernel[0]
        assert drain(rx) + first == FLOOD  # every datagram was either read or counted
        snap = health.snapshot()
        assert snap["state"] == "degraded"
        assert "receive buffer full" in snap["degraded"]["udp_drops"]["reason"]
        assert snap["udp"]["source"] == "proc"
        assert snap["udp"]["drops"] == first

        flood(tx, 5000)
        now[0] += 10
        drops.poll()
        assert health.counters["udp_drops"] > first
        assert health.counters["udp_drops"] == proc_drops(rx)[0]  # type: ignore[index]
        drain(rx)
        now[0] += 29
        drops.poll()
        assert "udp_drops" in health.degraded  # drops 29 s ago: still degraded
        now[0] += 2
        drops.poll()
        assert health.snapshot()["state"] == "ok"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert "kernel drops datagrams on UDP 127.0.0.1:test" in warnings[0].getMessage()
    assert len(infos) == 1
    assert "recovered" in infos[0].getMessage()
    assert sum("dropped" in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG) == 2  # each increase: a debug line


def test_rxq_ovfl_ancillary_count_matches_the_kernel() -> None:
    health = board()
    drops = UdpDrops(health, health._log, rcvbuf=4096)
    with udp_pair() as (rx, tx):
        drops.attach(rx, "test", rxq_ovfl=True)
        flood(tx)
        got = drain(rx, drops)
        tx.send(b"after the flood")  # carries the count of everything dropped before it
        got += drain(rx, drops)
        kernel = proc_drops(rx)
        assert kernel is not None
        assert health.counters["udp_drops"] == kernel[0] > 0
        assert got + kernel[0] == FLOOD + 1
        assert health.snapshot()["udp"]["source"] == "SO_RXQ_OVFL"
        assert health.snapshot()["state"] == "degraded"


def test_ipv6_socket_is_found_in_proc_net_udp6() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    health = board()
    drops = UdpDrops(health, health._log, rcvbuf=4096)
    with udp_pair("::1", socket.AF_INET6) as (rx, tx):
        drops.attach(rx, "[::1]:test")
        flood(tx, 2000)
        assert drops.poll()
        assert health.counters["udp_drops"] > 0
        assert drain(rx) + health.counters["udp_drops"] == 2000


def test_an_unlisted_socket_is_not_counted() -> None:
    health = board()
    drops = UdpDrops(health, health._log)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        drops.attach(tcp, "tcp, not udp")
        assert not drops.poll()
    snap = health.snapshot()
    assert snap["udp"]["source"] is None
    assert "udp_drops" not in snap["counters"]
    assert snap["state"] == "ok"
