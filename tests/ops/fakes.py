"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket and a reader thread."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: a thread stamps each datagram as it arrives."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.02)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def wait(self, seconds: float) -> list[dict[str, str]]:
        time.sleep(seconds)
        return [m for _, m in self.messages]

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if m.get("WATCHDOG") == "1"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@contextlib.contextmanager
def fake_notify_socket() -> Iterator[tuple[FakeSystemd, str]]:
    """``(fake, path)``; set ``NOTIFY_SOCKET=path`` for the process under test."""
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sgn") as d:
        path = str(Path(d) / "notify")
        fake = FakeSystemd(path)
        try:
            yield fake, path
        finally:
            fake.close()
