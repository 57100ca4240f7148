"""SerialLink over real pty pairs: read, write, unplug, replug, missing and busy ports."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from pathlib import Path

import pytest

from drivers.api import DeviceHealth
from drivers.serial.port import PortUnavailableError, SerialLink, describe_error

LOG = logging.getLogger("streetgate.driver.serial.test")


def link_for(path: Path, states: list[bool] | None = None) -> tuple[SerialLink, DeviceHealth]:
    health = DeviceHealth("port", LOG)
    link = SerialLink(str(path), baudrate=9600, logger=LOG, health=health, reopen_min=0.05,
                      reopen_max=0.2, on_state=None if states is None else states.append)
    return link, health


async def collect(link: SerialLink, into: bytearray) -> None:
    async with contextlib.aclosing(link.chunks()) as stream:
        async for data in stream:
            into += data


def test_reads_and_writes_through_a_pty(harness, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> None:
        link, health = link_for(dev.link)
        got = bytearray()
        reader = asyncio.create_task(collect(link, got))
        await harness.until(lambda: link.is_open, what="open")
        dev.write(b"hello ")
        dev.write(b"world\r\n")
        await harness.until(lambda: bytes(got) == b"hello world\r\n", what="bytes")
        await link.write(b"READ\r\n" * 100)
        assert await dev.read(lambda b: len(b) >= 600) == b"READ\r\n" * 100
        link.close()
        await asyncio.wait_for(reader, 2)
        assert health.ok
        assert health.counters == {"ok": 1}

    harness.run(body())


def test_unplug_is_reported_once_and_replug_recovers(harness, raw_pty, caplog) -> None:
    first = raw_pty()

    async def body() -> None:
        states: list[bool] = []
        link, health = link_for(first.link, states)
        got = bytearray()
        reader = asyncio.create_task(collect(link, got))
        await harness.until(lambda: link.is_open, what="open")
        first.close()  # USB unplug: master gone, symlink gone
        await harness.until(lambda: not health.ok, what="failure")
        await asyncio.sleep(0.5)  # several reopen attempts while the path is missing
        assert health.counters["unavailable"] == 1
        assert health.counters["reopen_failures"] >= 2
        assert not reader.done()
        second = raw_pty()
        second.link.unlink()
        second.link = first.link  # replug: the same configured path, a new pty behind it
        second.link.symlink_to(os.ttyname(second.slave))
        await harness.until(lambda: health.ok and link.is_open, what="recovery")
        second.write(b"after replug")
        await harness.until(lambda: bytes(got) == b"after replug", what="data after replug")
        assert states == [True, False, True]
        link.close()
        await asyncio.wait_for(reader, 2)

    with caplog.at_level(logging.INFO, logger=LOG.name):
        harness.run(body())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert "lost" in warnings[0].getMessage()
    assert len(infos) == 1
    assert "is back" in infos[0].getMessage()


def test_missing_port_is_retried_without_raising(harness, tmp_path) -> None:
    async def body() -> None:
        link, health = link_for(tmp_path / "ttyUSB9")
        reader = asyncio.create_task(collect(link, bytearray()))
        await harness.until(lambda: health.counters.get("reopen_failures", 0) >= 3,
                            what="retries")
        assert not health.ok
        assert "not found" in (health.last_error or "")
        assert health.counters["unavailable"] == 1
        with pytest.raises(PortUnavailableError, match="not found"):
            await link.write(b"x")
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    harness.run(body())


def test_busy_port_is_reported(harness, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> None:
        owner, _ = link_for(dev.link)
        second, health = link_for(dev.link)
        tasks = [asyncio.create_task(collect(owner, bytearray()))]
        await harness.until(lambda: owner.is_open, what="owner open")
        tasks.append(asyncio.create_task(collect(second, bytearray())))
        await harness.until(lambda: not health.ok, what="busy")
        assert "busy" in (health.last_error or "")
        owner.close()  # the lock is released with the fd: the second link gets the port
        await harness.until(lambda: second.is_open, what="second open")
        second.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 2)

    harness.run(body())


def test_cancelling_the_reader_closes_the_port(harness, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> None:
        link, _ = link_for(dev.link)
        reader = asyncio.create_task(collect(link, bytearray()))
        await harness.until(lambda: link.is_open, what="open")
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        assert not link.is_open
        again, health = link_for(dev.link)  # not locked any more
        reader = asyncio.create_task(collect(again, bytearray()))
        await harness.until(lambda: again.is_open, what="reopen")
        assert health.ok
        again.close()
        await asyncio.wait_for(reader, 2)

    harness.run(body())


def test_event_loop_keeps_ticking_through_bursts_and_unplug(harness, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> float:
        link, health = link_for(dev.link)
        got = bytearray()
        reader = asyncio.create_task(collect(link, got))
        worst = 0.0
        loop = asyncio.get_running_loop()
        await harness.until(lambda: link.is_open, what="open")
        for _ in range(50):
            dev.write(os.urandom(2000))
            before = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - before)
        dev.close()
        for _ in range(20):
            before = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - before)
        assert not health.ok
        assert len(got) > 0
        link.close()
        await asyncio.wait_for(reader, 2)
        return worst

    # A blocking read or open would stall the loop for the length of the port timeout.
    assert harness.run(body()) < 0.5


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOENT, "not found"), (errno.ENODEV, "not found"), (errno.EACCES, "dialout"),
    (errno.EBUSY, "busy"), (errno.EAGAIN, "busy"), (errno.EIO, "lost")])
def test_error_words_for_technicians(code: int, words: str) -> None:
    assert words in describe_error(OSError(code, os.strerror(code)))


def test_unknown_errors_keep_their_message() -> None:
    assert describe_error(ValueError("bad baud")) == "bad baud"
