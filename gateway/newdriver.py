"""``streetgate new-driver NAME``: a driver package that passes the contract as generated.

The template is a small, complete driver for a line-based TCP device (it answers ``READ``
with ``key=value`` pairs), with its simulator, example config, README and contract test:
copy it, then replace the protocol parts.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

__all__ = ["generate"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,30}$")

_PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "streetgate-$dash"
version = "0.1.0"
description = "streetgate driver: $name"
requires-python = ">=3.11"
dependencies = ["streetgate"]

[project.entry-points."streetgate.drivers"]
$name = "$pkg:${Cls}Driver"

[tool.setuptools.package-data]
"*" = ["*.toml", "*.md"]
"""

_INIT = '''"""streetgate driver: $name."""

from $pkg.driver import ${Cls}Driver

__all__ = ["${Cls}Driver"]
'''

_CONFIG = '''"""Schema of the $name driver."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.api import Duration, option


@dataclass(frozen=True, kw_only=True)
class ${Cls}Config:
    host: str = option("127.0.0.1", doc="device address")
    port: int = option(doc="device TCP port", minimum=1, maximum=65535)
    device: str = option("dev-1", doc="device name used in point names", pattern=r"[A-Za-z0-9_.-]+")
    interval: Duration = option(Duration(5.0), doc="poll period", minimum=0.05)
    timeout: Duration = option(Duration(1.0), doc="answer timeout", minimum=0.01)
'''

_DRIVER = '''"""The $name driver: polls a line-based TCP device (``READ`` -> ``key=value;...``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from drivers.api import (
    Backoff,
    Driver,
    Poller,
    Quality,
    Reading,
    SimulatedSetup,
    Sink,
    Value,
    WriteError,
)
from $pkg.config import ${Cls}Config

#: Units of the keys the device reports (SenML names).
UNITS = {"temp": "Cel", "hum": "%RH"}


def parse(line: bytes) -> dict[str, float]:
    """``b"temp=21.5;hum=40"`` -> ``{"temp": 21.5, "hum": 40.0}``; ValueError if malformed."""
    out: dict[str, float] = {}
    for part in line.decode("ascii").strip().split(";"):
        key, _, value = part.partition("=")
        if key not in UNITS:
            raise ValueError(f"unknown field {key!r}")
        out[key] = float(value)
    return out


class ${Cls}Driver(Driver[${Cls}Config]):
    """Line-based TCP sensor (template driver)."""

    name = "$name"
    config_schema = ${Cls}Config
    simulator = "$pkg.sim"

    def __init__(self, config: ${Cls}Config, context: Any) -> None:
        super().__init__(config, context)
        self._line = asyncio.Lock()  # one exchange at a time: a write waits for a poll

    def writable_points(self) -> list[str]:
        return [self._point("fan")]

    async def write(self, point: str, value: Value) -> Value:
        """``SET fan=0|1`` -> ``OK fan=<now>``; the device's answer is the read-back."""
        if point != self._point("fan"):
            raise WriteError("not-writable", f"{point} is not writable")
        if value not in (0, 1) or isinstance(value, float | str | bytes):
            raise WriteError("bad-value", f"{value!r}: the fan takes 0 or 1")
        cfg = self.config
        async with self._line:
            try:
                async with asyncio.timeout(cfg.timeout):
                    reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
            except (OSError, TimeoutError) as exc:
                raise WriteError("unavailable", f"{cfg.host}:{cfg.port}: {exc}") from exc
            try:
                writer.write(f"SET fan={int(value)}\\n".encode())
                async with asyncio.timeout(cfg.timeout):
                    line = await reader.readline()
            except (OSError, TimeoutError) as exc:
                raise WriteError("timeout", f"no answer to SET: {exc}") from exc
            finally:
                writer.close()
        answer = line.decode("ascii", "replace").strip()
        if not answer.startswith("OK fan="):
            raise WriteError("device-error", f"device answered {answer!r}")
        now = int(answer.removeprefix("OK fan="))
        if now != int(value):
            raise WriteError("mismatch", f"fan is {now}", value=now)
        return now

    async def run(self, sink: Sink) -> None:
        cfg = self.config
        dev = self.health.device(cfg.device)
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        backoff = Backoff(0.2, 30.0)
        try:
            async for _tick in Poller(cfg.interval):
                try:
                    # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can lose a
                    # cancellation that arrives with the answer, and the driver would not stop.
                    if conn is None:
                        async with asyncio.timeout(cfg.timeout):
                            conn = await asyncio.open_connection(cfg.host, cfg.port)
                    async with self._line:
                        conn[1].write(b"READ\\n")
                        async with asyncio.timeout(cfg.timeout):
                            line = await conn[0].readline()
                    if not line:
                        raise ConnectionError("device closed the connection")
                    values = parse(line)
                except (OSError, TimeoutError, ConnectionError) as exc:
                    dev.failure(f"{type(exc).__name__}: {exc}", "timeouts")
                    self._bad(sink, Quality.TIMEOUT)
                    conn = _close(conn)
                    await backoff.sleep()
                    continue
                except (ValueError, UnicodeDecodeError) as exc:
                    dev.failure(f"malformed answer: {exc}", "malformed")
                    self._bad(sink, Quality.MALFORMED)
                    continue
                backoff.reset()
                dev.success()
                ts = sink.now_ms()
                sink.emit([Reading(self._point(k), ts, v, Quality.GOOD, UNITS[k])
                           for k, v in values.items()])
        finally:
            _close(conn)

    def _point(self, key: str) -> str:
        return f"{self.context.instance}/{self.config.device}/{key}"

    def _bad(self, sink: Sink, quality: Quality) -> None:
        ts = sink.now_ms()
        sink.emit([Reading(self._point(k), ts, None, quality, u) for k, u in UNITS.items()])

    @classmethod
    @contextlib.asynccontextmanager
    async def simulate(cls, workdir: Path) -> AsyncIterator[SimulatedSetup]:  # noqa: ARG003
        from $pkg.sim import ${Cls}Simulator  # noqa: PLC0415

        sim = ${Cls}Simulator()
        await sim.start()
        try:
            yield sim
        finally:
            await sim.close()


def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn is not None:
        conn[1].close()
'''

_SIM = '''"""Simulator of the $name device: a TCP server on a free loopback port."""

from __future__ import annotations

import asyncio
import random
from typing import Any


class ${Cls}Simulator:
    """Answers ``READ`` with ``temp=..;hum=..``; can vanish, come back, or talk garbage."""

    #: What the contract suite writes and expects read back.
    writes = {"dev-1/fan": 1}

    def __init__(self) -> None:
        self.port = 0
        self.fan = 0
        self.malformed = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def config(self) -> dict[str, Any]:
        return {"port": self.port, "interval": "100ms", "timeout": "300ms"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                if line.startswith(b"SET fan="):
                    self.fan = 1 if line.strip().endswith(b"1") else 0
                    print(f"fan set to {self.fan}")  # noqa: T201 - the simulator's console
                    writer.write(f"OK fan={self.fan}\\n".encode())
                elif self.malformed:
                    writer.write(b"\\xff\\x00garbage\\n")
                else:
                    temp, hum = 20 + random.random() * 5, 40 + random.random() * 10
                    writer.write(f"temp={temp:.2f};hum={hum:.1f}\\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.malformed = False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def inject_malformed(self) -> None:
        self.malformed = True

    async def heal(self) -> None:
        self.malformed = False

    async def close(self) -> None:
        await self.stop()
'''

_EXAMPLE = """## $name: a line-based TCP sensor polled with READ.
[[drivers.$name]]
instance = "$name-1"
## Where the device listens.
host = "127.0.0.1"
port = 7000
## Name used in point names: <instance>/<device>/<key>.
# device = "dev-1"
# interval = "5s"
# timeout = "1s"
"""

_README = """# $name driver

Polls a line-based TCP sensor: it sends `READ` and parses the `key=value;...` answer into
readings `<instance>/<device>/temp` (Cel) and `<instance>/<device>/hum` (%RH). One point can
be written by command: `<instance>/<device>/fan` (0 or 1), sent as `SET fan=N` and read back
from the device's `OK fan=N` (list it in the cabinet's `[[commands.writable]]`).

```toml
${example}```

Install next to streetgate with `pip install .`; `streetgate drivers` then lists `$name`.
Run the contract suite with `pytest tests/`.

## Troubleshooting

- **timeouts**: the device does not answer within `timeout`: check host, port and wiring.
- **malformed**: the device answers something else than `key=value;...`: check its firmware.
"""

_TEST = '''"""The streetgate driver contract, run on this driver."""

import asyncio
from pathlib import Path

import $pkg
from drivers.testing import check_contract, check_package
from $pkg import ${Cls}Driver


def test_package() -> None:
    check_package(${Cls}Driver, Path($pkg.__file__).parent)


def test_contract(tmp_path: Path) -> None:
    asyncio.run(check_contract(${Cls}Driver, tmp_path))
'''


def generate(name: str, where: Path) -> Path:
    """Write ``streetgate-<name>/`` under ``where``; returns its path."""
    if not _NAME_RE.match(name):
        msg = f'driver name: expected lowercase letters, digits and "_" (2-31); got "{name}"'
        raise ValueError(msg)
    pkg = f"streetgate_{name}"
    cls = "".join(part.capitalize() for part in name.split("_"))
    values = {"name": name, "pkg": pkg, "Cls": cls, "dash": name.replace("_", "-")}
    example = Template(_EXAMPLE).substitute(values)
    root = where / f"streetgate-{values['dash']}"
    if root.exists():
        msg = f"{root} already exists"
        raise FileExistsError(msg)
    files = {
        "pyproject.toml": _PYPROJECT, f"{pkg}/__init__.py": _INIT,
        f"{pkg}/config.py": _CONFIG, f"{pkg}/driver.py": _DRIVER, f"{pkg}/sim.py": _SIM,
        f"{pkg}/example.toml": _EXAMPLE, f"{pkg}/README.md": _README,
        "tests/test_contract.py": _TEST,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(values, example=example))
    return root
