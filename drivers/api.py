"""The driver API: the one module an integrator writing a driver needs.

A driver is a class registered under the entry-point group ``streetgate.drivers``::

    [project.entry-points."streetgate.drivers"]
    mydevice = "my_package:MyDriver"

It declares its configuration as a frozen keyword-only dataclass (``config_schema``), is
built with ``MyDriver(config, context)`` and runs as ``async def run(self, sink)`` until
cancelled. Example::

    @dataclass(frozen=True, kw_only=True)
    class MyConfig:
        port: str
        interval: Duration = option(Duration(5.0), doc="poll period")

    class MyDriver(Driver[MyConfig]):
        name = "mydevice"
        config_schema = MyConfig

        async def run(self, sink: Sink) -> None:
            poller = Poller(self.config.interval)
            async for _tick in poller:
                sink.emit([Reading(f"{self.context.instance}/temp", sink.now_ms(), 21)])
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from drivers._schema import ByteSize, ConfigError, ConfigIssue, Duration, dump, load, option
from drivers._udp import UdpDrops, set_rcvbuf

if TYPE_CHECKING:
    import argparse
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

__all__ = [
    "WRITE_FAILURES",
    "Backoff",
    "ByteSize",
    "ConfigError",
    "ConfigIssue",
    "DeviceHealth",
    "Driver",
    "DriverContext",
    "Duration",
    "HealthBoard",
    "Poller",
    "Quality",
    "Reading",
    "SimulatedSetup",
    "Sink",
    "StateStore",
    "UdpDrops",
    "Value",
    "WriteError",
    "dump",
    "load",
    "option",
    "set_rcvbuf",
]

Value = bool | int | float | str | bytes | None
C = TypeVar("C")

#: Why a write did not happen, as a command's result says it (docs/wire-format.md, commands).
WRITE_FAILURES = frozenset({
    "not-writable",  # the driver cannot write this point (no write template, read-only table)
    "bad-value",     # the value does not fit the point's encoding (type, width, scale)
    "device-error",  # the device answered with an error (Modbus exception, NAK, error reply)
    "timeout",       # no answer in time
    "unavailable",   # port, connection or device not there; a command waits and retries
    "mismatch",      # written, but the read-back value differs
    "rejected",      # a radio or modem refused to send (LoRa TX_ACK error, busy duty cycle)
})


class WriteError(Exception):
    """A write that did not happen as asked.

    Args:
        reason: one of :data:`WRITE_FAILURES`.
        detail: what happened, for a person (``"exception 2 (illegal data address)"``).
        code: the device's own error code when it sent one (a Modbus exception code).
        value: the value read back, for ``mismatch``.
    """

    def __init__(self, reason: str, detail: str, *, code: int | None = None,
                 value: Value = None) -> None:
        if reason not in WRITE_FAILURES:
            raise ValueError(f"unknown write failure {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.code = code
        self.value = value


class Quality(enum.IntEnum):
    """Why a reading is not good. The integer is what travels on the wire."""

    GOOD = 0
    TIMEOUT = 1
    CRC_ERROR = 2
    MALFORMED = 3
    OUT_OF_RANGE = 4
    DEVICE_ERROR = 5
    #: A protocol-level exception; the reading's value carries the code (e.g. Modbus 2).
    EXCEPTION = 6
    #: The port or device is not there (unplugged, not found).
    UNAVAILABLE = 7


class Reading(NamedTuple):
    """One value of one point at one time (an immutable tuple: cheap on the hot path).

    Args:
        point: stable name, ``<instance>/<device>/<point>`` by convention.
        ts: milliseconds since the Unix epoch, from :meth:`Sink.now_ms`.
        value: native type; ``None`` (or an error code with ``Quality.EXCEPTION``) when bad.
        quality: :class:`Quality`; anything but GOOD says why the value is missing.
        unit: the point's unit (SenML unit names where one exists: ``V``, ``A``, ``W``, ``Cel``).
    """

    point: str
    ts: int
    value: Value
    quality: Quality = Quality.GOOD
    unit: str | None = None


class Sink(Protocol):
    """Where a driver sends readings. ``emit`` never blocks and never raises on a slow uplink.

    The daemon's sink also has ``backlog() -> int``: readings emitted but not yet written to
    the buffer. Only a driver that can produce faster than any field bus (a replay, the
    ``sim`` driver's flood mode) needs it: pause while it is high.
    """

    def emit(self, readings: Iterable[Reading]) -> None: ...

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch (the daemon marks an unsynced clock)."""
        ...


class StateStore(Protocol):
    """Small durable key/value state a driver may keep (e.g. LoRaWAN frame counters)."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...


class _MemoryState:
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def set(self, key: str, value: bytes) -> None:
        self._data[key] = value


class DeviceHealth:
    """One device's health: logs the transitions, counts the rest (STYLE §8)."""

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self._log = logger
        self.ok = True
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.counters: dict[str, int] = {}

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + n

    def success(self) -> None:
        self.count("ok")
        if not self.ok:
            self._log.info("device %s is back after %.0fs", self.name,
                           time.time() - (self.failing_since or time.time()))
            self.ok = True
            self.failing_since = None

    def failure(self, error: str, counter: str = "errors") -> None:
        self.count(counter)
        self.last_error = error
        if self.ok:
            self._log.warning("device %s failing: %s", self.name, error)
            self.ok = False
            self.failing_since = time.time()
        else:
            self._log.debug("device %s still failing: %s", self.name, error)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": "ok" if self.ok else "failing",
            "failing_since": self.failing_since,
            "last_error": self.last_error,
            "counters": dict(self.counters),
        }


class HealthBoard:
    """The health of one driver instance and its devices, as reported in status.

    Besides per-device health, the driver as a whole is ``degraded`` while any condition
    marked with :meth:`degrade` (e.g. ``udp_drops``) has not been cleared by :meth:`recover`.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self.devices: dict[str, DeviceHealth] = {}
        self.counters: dict[str, int] = {}
        self.extra: dict[str, Any] = {}
        #: condition -> {"reason": str, "since": wall-clock seconds}
        self.degraded: dict[str, dict[str, Any]] = {}

    def device(self, name: str) -> DeviceHealth:
        if name not in self.devices:
            self.devices[name] = DeviceHealth(name, self._log)
        return self.devices[name]

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + n

    def degrade(self, condition: str, reason: str) -> None:
        """Mark the driver degraded by ``condition``: warns once, then only updates ``reason``."""
        if condition not in self.degraded:
            self._log.warning("degraded: %s", reason)
            self.degraded[condition] = {"reason": reason, "since": time.time()}
        else:
            self.degraded[condition]["reason"] = reason

    def recover(self, condition: str) -> None:
        """Clear ``condition``: one info line if it was set."""
        entry = self.degraded.pop(condition, None)
        if entry is not None:
            self._log.info("%s: recovered after %.0fs", condition, time.time() - entry["since"])

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": "degraded" if self.degraded else "ok",
            "degraded": {k: dict(v) for k, v in self.degraded.items()},
            "devices": {k: v.snapshot() for k, v in self.devices.items()},
            "counters": dict(self.counters),
            **self.extra,
        }


@dataclasses.dataclass(kw_only=True)
class DriverContext:
    """What the daemon hands a driver besides its config."""

    instance: str
    logger: logging.Logger
    health: HealthBoard
    state: StateStore

    @classmethod
    def standalone(cls, instance: str, driver: str = "driver") -> DriverContext:
        """A context for tests and field tools, with in-memory state."""
        logger = logging.getLogger(f"streetgate.driver.{driver}.{instance}")
        return cls(instance=instance, logger=logger, health=HealthBoard(logger),
                   state=_MemoryState())


class Driver(Generic[C]):
    """Base class of every driver (built-in or third-party).

    Class attributes:
        name: the entry-point name and the config section (``[[drivers.<name>]]``).
        config_schema: a frozen keyword-only dataclass (see ``drivers.api.option``).
        simulator: dotted path of the simulator module, for the contract suite and docs.
    """

    name: ClassVar[str] = ""
    config_schema: ClassVar[type[Any]]
    simulator: ClassVar[str | None] = None

    def __init__(self, config: C, context: DriverContext) -> None:
        self.config = config
        self.context = context

    @property
    def log(self) -> logging.Logger:
        return self.context.logger

    @property
    def health(self) -> HealthBoard:
        return self.context.health

    async def run(self, sink: Sink) -> None:
        """Produce readings until cancelled.

        Raises:
            Nothing it can recover from itself: a missing device is retried with
            :class:`Backoff` and shown in health; only a bug escapes, and the daemon then
            restarts this driver alone after a delay.
        """
        raise NotImplementedError

    def points(self) -> Iterable[tuple[str, str | None]]:
        """The (point name, unit) pairs this driver can emit, for docs and checks."""
        return ()

    def writable_points(self) -> Iterable[str]:
        """The points :meth:`write` can write (optional; none by default).

        The cabinet's ``[commands]`` config decides which of them a command may write, and
        within which limits: a driver only says what it is able to do.
        """
        return ()

    async def write(self, point: str, value: Value) -> Value:
        """Write ``value`` to ``point``, read it back and return what the device now reports.

        Called by the gateway's command runner only for a point in :meth:`writable_points`,
        with a value the cabinet's limits already accepted, one write per point at a time. A
        write goes ahead of queued polls and never interleaves with a transaction in progress.
        A device that does not answer raises at once (``timeout`` or ``unavailable``): the
        runner keeps the command and retries until it expires.

        Raises:
            WriteError: the write did not happen as asked; ``reason`` says why.
        """
        raise WriteError("not-writable",
                         f"the {self.name} driver cannot write {point} (value {value!r})")

    @classmethod
    def register_cli(
        cls,
        sim: argparse._SubParsersAction[argparse.ArgumentParser],
        tools: argparse._SubParsersAction[argparse.ArgumentParser],
    ) -> None:
        """Add ``streetgate sim <name>`` and field-tool subcommands (optional).

        Each parser sets ``func=callable(args) -> int`` with ``set_defaults``.
        """

    @classmethod
    def simulate(cls, workdir: Path) -> AbstractAsyncContextManager[SimulatedSetup]:
        """Start this driver's simulator for the contract suite (``drivers.testing``)."""
        raise NotImplementedError(f"driver {cls.name!r} ships no simulator")

    @classmethod
    def parse_config(cls, data: Mapping[str, Any], *, file: str, path: str) -> C:
        return load(cls.config_schema, data, file=file, path=path)  # type: ignore[no-any-return]


class Backoff:
    """Capped exponential backoff with full jitter (STYLE §9)."""

    def __init__(self, base: float = 0.5, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())


class Poller:
    """Fixed-rate ticks with optional start jitter; a late tick is skipped, not bunched.

    ``async for tick in Poller(5.0)`` yields the scheduled monotonic time of each tick.
    """

    def __init__(self, interval: float, *, jitter: float = 0.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.jitter = jitter
        self.skipped = 0

    async def __aiter__(self) -> AsyncIterator[float]:
        loop = asyncio.get_running_loop()
        due = loop.time() + (random.uniform(0, self.jitter) if self.jitter else 0.0)
        while True:
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            yield due
            due += self.interval
            now = loop.time()
            if now > due:
                missed = int((now - due) // self.interval) + 1
                self.skipped += missed
                due += missed * self.interval


class SimulatedSetup(Protocol):
    """A running simulator and the driver config that points at it (for the contract suite).

    ``config`` is the driver's config table (without ``instance``). ``stop``/``start`` take the
    simulated device away and bring it back on the same address; ``inject_malformed`` makes the
    next answers or frames garbage (bad CRC, broken framing) until ``start`` or ``heal``.

    A simulator of a device that can be written also has ``writes``: ``{"<device>/<point>":
    value}`` (the point without the instance), values the contract writes and expects read back.
    """

    config: Mapping[str, Any]

    async def stop(self) -> None: ...

    async def start(self) -> None: ...

    async def inject_malformed(self) -> None: ...

    async def heal(self) -> None: ...

    async def close(self) -> None: ...
