"""sd_notify without libsystemd: READY, STATUS, WATCHDOG, RELOADING, STOPPING on $NOTIFY_SOCKET.

The protocol is a datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``); see
sd_notify(3) and systemd.service(5) "WatchdogSec=". Outside systemd every call is a no-op.

What the watchdog covers (and what it must not): pings come from a task on the event loop, so a
blocked loop stops them by itself. They also stop while a :class:`Liveness` expectation goes
stale: a pipeline stage (the store's worker thread, the uplink task) that has made no progress for
longer than its allowance. A broker that is down is *not* unhealthy: the uplink keeps retrying
and the buffer keeps every reading, and a restart would change nothing. Only an uplink stuck in
one connect attempt far longer than any attempt can take counts as wedged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

__all__ = ["Liveness", "Notifier", "uplink_probe", "watchdog_interval", "watchdog_loop",
           "worker_probe"]

_log = logging.getLogger("streetgate.notify")


class Notifier:
    """Sends sd_notify messages to the socket systemd gave us; silent when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        # sd_notify(3): a leading "@" names a socket in the abstract namespace.
        self.address: str | None = ("\0" + raw[1:]) if raw.startswith("@") else (raw or None)
        self.interval = watchdog_interval(env)
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=value`` lines; True if it left."""
        if self.address is None:
            return False
        text = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: a full systemd queue drops this one message.
                self._sock.setblocking(False)
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            self.failed += 1
            _log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": _one_line(status)} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=_one_line(text))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        # systemd.service(5) Type=notify-reload: RELOADING=1 with the CLOCK_MONOTONIC time in µs.
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC), or None when no watchdog is ours.

    sd_watchdog_enabled(3): $WATCHDOG_PID, when set, must be this process.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Liveness:
    """Named progress heartbeats; healthy while every expectation was beaten recently."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._allow: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def expect(self, name: str, within: float) -> None:
        """``name`` must :meth:`beat` at least every ``within`` seconds from now on."""
        self._allow[name] = within
        self._last[name] = self._clock()

    def forget(self, name: str) -> None:
        self._allow.pop(name, None)
        self._last.pop(name, None)

    def beat(self, name: str) -> None:
        self._last[name] = self._clock()

    def stale(self) -> list[str]:
        """The expectations not met, as ``"name silent for 42s"``."""
        now = self._clock()
        return [f"{n} silent for {now - self._last[n]:.0f}s"
                for n, allow in sorted(self._allow.items()) if now - self._last[n] > allow]

    def __call__(self) -> bool:
        return not self.stale()


async def watchdog_loop(notifier: Notifier, healthy: Callable[[], bool], *,
                        interval: float | None = None,
                        why: Callable[[], list[str]] | None = None) -> None:
    """Ping WATCHDOG=1 every ``interval`` (default: half the timeout) while ``healthy()``.

    Returns at once when systemd set no watchdog for this process. When ``healthy()`` turns
    false the pings stop (systemd then kills and restarts the process) and the reason, from
    ``why()`` if given, goes to the log and to STATUS once.
    """
    every = interval if interval is not None else notifier.interval
    if every is None or not notifier.enabled:
        return
    withholding = False
    while True:
        if healthy():
            if withholding:
                _log.info("watchdog: healthy again, pings resumed")
                withholding = False
            notifier.watchdog()
        elif not withholding:
            withholding = True
            reason = "; ".join(why()) if why is not None else "health check failed"
            _log.error("watchdog: withholding pings, systemd will restart the gateway: %s",
                       reason)
            with contextlib.suppress(OSError):
                notifier.status(f"unhealthy: {reason}")
        await asyncio.sleep(every)


async def uplink_probe(liveness: Liveness, state: Callable[[], str], *, name: str = "uplink",
                       connect_grace: float = 300.0, period: float = 5.0) -> None:
    """Beat ``name`` unless the uplink sits in one ``"connecting"`` state past ``connect_grace``.

    Disconnected (broker down, backing off) is fine; only a connect attempt that never ends is
    a wedged task. Register with ``liveness.expect(name, connect_grace + 2 * period)``.
    """
    since: float | None = None
    while True:
        now = time.monotonic()
        connecting = state() == "connecting"
        since = (since or now) if connecting else None
        if since is None or now - since < connect_grace:
            liveness.beat(name)
        await asyncio.sleep(period)


async def worker_probe(liveness: Liveness, call: Callable[[], Awaitable[object]], *,
                       name: str = "store", period: float = 10.0) -> None:
    """Beat ``name`` each time ``call()`` (a no-op run on a worker thread) comes back."""
    while True:
        await call()
        liveness.beat(name)
        await asyncio.sleep(period)
