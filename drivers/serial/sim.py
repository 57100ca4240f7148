"""Serial simulator: a device on a pty pair behind a stable symlink, with noise and drop-outs.

The driver opens the symlink (as it would a udev ``/dev/serial/by-id/...`` link).
``stop()`` is an unplug: the pty master closes, so the driver's reads fail with EIO, and
the symlink disappears; ``start()`` is a replug onto a new pty pair, the symlink re-pointed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tty
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from drivers.api import Duration
from drivers.serial._model import unescape
from drivers.serial.profiles import make_profile, profile_config

__all__ = ["SerialSimulator", "Step", "contract_setup", "load_script", "parse_dropout"]

_NOISE = ("garbage", "corrupt", "truncate", "oversize")


@dataclass(frozen=True)
class Step:
    """One script line: bytes to send, or a pause."""

    data: bytes = b""
    delay: float = 0.0


def _step(verb: str, rest: str) -> Step:
    if verb == "line":
        return Step(unescape(rest) + b"\r\n")
    if verb == "text":
        return Step(unescape(rest))
    if verb == "hex":
        return Step(bytes.fromhex(rest))
    if verb == "wait":
        return Step(delay=Duration.parse(rest))
    raise ValueError(f"unknown step {verb!r}; expected line, text, hex or wait")


def load_script(text: str) -> list[Step]:
    r"""Parse a replay script.

    One step per line: ``line TEXT`` (TEXT + CR LF), ``text TEXT`` (escapes ``\r \n \t
    \\ \xNN``), ``hex 42 4D ...``, ``wait 250ms``; ``#`` starts a comment line.

    Raises:
        ValueError: naming the line that is wrong.
    """
    steps: list[Step] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            steps.append(_step(*line.partition(" ")[::2]))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"script line {number}: {exc}") from None
    if not any(s.data for s in steps):
        raise ValueError("script sends nothing")
    return steps


def parse_dropout(text: str) -> tuple[float, float]:
    """``"30s/5s"`` -> every 30 s, gone for 5 s."""
    every, _, length = text.partition("/")
    try:
        return Duration.parse(every), Duration.parse(length)
    except ValueError:
        raise ValueError(f'expected EVERY/FOR such as "30s/5s"; got {text!r}') from None


class SerialSimulator:
    """A simulated serial device (``async with`` it; it also satisfies ``SimulatedSetup``).

    Args:
        link: the stable path the driver opens (a symlink to the current pty).
        profile: nmea-weather, nmea-gps, pm-sensor or ascii-counter.
        rate: frames (or script steps) per second when streaming.
        noise: probability per frame of garbage, a flipped bit, truncation or an oversized blob.
        script: steps to replay instead of the profile's frames (answers still come from it).
        dropout: (every, for) seconds: unplug (or fall silent) periodically.
        latency: seconds between a command and its answer; a command that arrives before
            the previous answer went out is counted in ``stats["overlaps"]`` (on RS-485 the
            two would collide).
        on_event: told of unplugs, replugs and each write the device receives.
    """

    def __init__(self, link: Path, profile: str = "nmea-weather", *, rate: float = 1.0,
                 noise: float = 0.0, seed: int | None = None, script: list[Step] | None = None,
                 dropout: tuple[float, float] | None = None,
                 dropout_kind: Literal["unplug", "silence"] = "unplug", once: bool = False,
                 latency: float = 0.0, on_event: Callable[[str], None] | None = None) -> None:
        self.link = link
        self.profile = make_profile(profile, seed)
        self.config: Mapping[str, Any] = profile_config(profile, str(link))
        self._rng = random.Random(seed)
        self._rate, self._noise, self._script, self._once = rate, noise, script, once
        self._dropout, self._dropout_kind = dropout, dropout_kind
        self._on_event = on_event or (lambda _msg: None)
        self.profile.on_event = self._on_event
        self._latency = latency
        self._busy_until = 0.0
        self._fds: tuple[int, int] | None = None
        self._rx = bytearray()
        self._malformed = self._silent = False
        self._tasks: list[asyncio.Task[None]] = []
        self.device: str | None = None
        self.stats = {"frames": 0, "noisy": 0, "answers": 0, "dropped": 0, "plugs": 0,
                      "overlaps": 0}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Plug the device in (a new pty pair) and heal it."""
        self._malformed = False
        if self._fds is None:
            self._plug()
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self._stream(), name="serial-sim.stream"))
            if self._dropout is not None:
                self._tasks.append(asyncio.create_task(self._dropouts(),
                                                       name="serial-sim.dropout"))

    async def stop(self) -> None:
        """Unplug: the driver's reads fail and the symlink disappears."""
        self._unplug()

    async def inject_malformed(self) -> None:
        self._malformed = True

    async def heal(self) -> None:
        self._malformed = False

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._unplug()

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # like a UART: no echo, no line editing, before anyone opens it
        os.set_blocking(master, False)
        self.device = os.ttyname(slave)
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.device)
        tmp.replace(self.link)
        self._fds = (master, slave)
        asyncio.get_running_loop().add_reader(master, self._readable)
        self.stats["plugs"] += 1

    def _unplug(self) -> None:
        if self._fds is None:
            return
        master, slave = self._fds
        self._fds = None
        with contextlib.suppress(RuntimeError):  # loop already closed
            asyncio.get_running_loop().remove_reader(master)
        self.link.unlink(missing_ok=True)
        os.close(master)
        os.close(slave)
        self._rx.clear()

    def _readable(self) -> None:
        if self._fds is None:
            return
        try:
            data = os.read(self._fds[0], 4096)
        except OSError:
            return
        self._rx += data
        loop = asyncio.get_running_loop()
        for command in self.profile.commands(self._rx):
            now = loop.time()
            if now < self._busy_until:
                self.stats["overlaps"] += 1
            if self._silent:
                continue
            reply = self.profile.malformed() if self._malformed else self.profile.answer(command)
            if reply is None:
                continue
            self.stats["answers"] += 1
            if self._latency > 0:
                self._busy_until = now + self._latency
                loop.call_later(self._latency, self._send, self._noisy(reply))
            else:
                self._send(self._noisy(reply))

    def _send(self, data: bytes) -> None:
        if self._fds is None or self._silent or not data:
            return
        try:
            sent = os.write(self._fds[0], data)
        except OSError:  # nobody reading and the tty buffer is full: a real UART drops too
            sent = 0
        self.stats["frames"] += 1
        if sent < len(data):
            self.stats["dropped"] += 1

    def _noisy(self, frame: bytes) -> bytes:
        rng = self._rng
        if self._malformed:
            return self._flip(frame)
        if self._noise <= 0 or rng.random() >= self._noise:
            return frame
        self.stats["noisy"] += 1
        kind = rng.choice(_NOISE)
        if kind == "garbage":
            return bytes(rng.randrange(256) for _ in range(rng.randint(1, 24))) + frame
        if kind == "corrupt":
            return self._flip(frame)
        if kind == "truncate":
            return frame[:len(frame) // 2]
        return bytes(rng.randrange(0x21, 0x7F) for _ in range(300)) + frame

    def _flip(self, frame: bytes) -> bytes:
        i = len(frame) // 2
        return frame[:i] + bytes([frame[i] ^ (1 << self._rng.randrange(8))]) + frame[i + 1:]

    async def _stream(self) -> None:
        period = 1.0 / self._rate
        if self._script is None:
            tick = 0
            while True:
                await asyncio.sleep(period)
                for frame in self.profile.frames(tick):
                    self._send(self._noisy(frame))
                tick += 1
        paced = not any(s.delay for s in self._script)
        while True:
            for step in self._script:
                if step.delay:
                    await asyncio.sleep(step.delay)
                    continue
                self._send(self._noisy(step.data))
                if paced:
                    await asyncio.sleep(period)
            if self._once:
                self._on_event("script done")
                return

    async def _dropouts(self) -> None:
        assert self._dropout is not None  # noqa: S101 - the task starts only with a dropout
        every, length = self._dropout
        while True:
            await asyncio.sleep(every)
            if self._dropout_kind == "silence":
                self._silent = True
                self._on_event(f"silent for {length:g}s")
                await asyncio.sleep(length)
                self._silent = False
                self._on_event("talking again")
                continue
            self._unplug()
            self._on_event(f"unplugged for {length:g}s")
            await asyncio.sleep(length)
            self._plug()
            self._on_event(f"replugged: {self.link} -> {self.device}")


@contextlib.asynccontextmanager
async def contract_setup(workdir: Path) -> AsyncIterator[SerialSimulator]:
    """The weather station at 20 Hz, and a driver config that reopens quickly."""
    sim = SerialSimulator(workdir / "ttySIM0", "nmea-weather", rate=20, seed=7)
    sim.config = profile_config("nmea-weather", str(sim.link), reopen_min="50ms",
                                reopen_max="500ms")
    async with sim:
        yield sim
