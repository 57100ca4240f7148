"""The HIL suite's fixtures: the rig (``--rig FILE`` or ``STREETGATE_RIG``; default: the
all-simulator rig) and the bench built from it, shared by every behaviour of a session.

Behaviours are parametrized by what the rig has (its devices, its serial ports, its LoRa
forwarders); where a rig has nothing for a behaviour, that behaviour is skipped and says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.api import ConfigError
from hil_tests._bench import Bench
from hil_tests.rig import Rig, load_rig

DEFAULT_RIG = Path(__file__).parent / "rigs" / "simulators.toml"
_RIG_KEY = pytest.StashKey[Rig]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rig", default=None, metavar="RIG.toml",
                     help="rig file for hil_tests (default: $STREETGATE_RIG or "
                          "hil_tests/rigs/simulators.toml)")


def pytest_configure(config: pytest.Config) -> None:
    """Check the rig file before anything runs: a bad one ends the run with its errors."""
    the_rig(config)


def rig_path(config: pytest.Config) -> Path:
    given = config.getoption("--rig") or os.environ.get("STREETGATE_RIG")
    return Path(given) if given else DEFAULT_RIG


def the_rig(config: pytest.Config) -> Rig:
    """The rig, loaded and validated once per session; a bad rig file stops the run."""
    if _RIG_KEY not in config.stash:
        try:
            config.stash[_RIG_KEY] = load_rig(rig_path(config))
        except ConfigError as exc:
            raise pytest.UsageError("invalid rig file:\n" + "\n".join(exc.lines())) from None
    return config.stash[_RIG_KEY]


def _none(reason: str) -> Any:
    return pytest.param(None, id="none", marks=pytest.mark.skip(reason=reason))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = {"device", "unplug_bus", "dead_device", "lora_bus", "write_device"} & set(
        metafunc.fixturenames)
    if not names:
        return
    rig = the_rig(metafunc.config)
    if "device" in names:
        metafunc.parametrize("device", rig.devices, ids=lambda d: f"{d.bus}/{d.name}")
    if "unplug_bus" in names:
        buses = [b for b in rig.buses if b.unplug is not None]
        metafunc.parametrize("unplug_bus", buses or [_none("rig has no serial device to "
                                                           "unplug")],
                             ids=lambda b: getattr(b, "instance", "none"))
    if "dead_device" in names:
        devs = [d for d in rig.devices if d.dead is not None]
        metafunc.parametrize("dead_device", devs or [_none("rig has no Modbus device it can "
                                                           "make dead")],
                             ids=lambda d: f"{d.bus}/{d.name}" if d else "none")
    if "write_device" in names:
        devs = [d for d in rig.devices if d.write]
        metafunc.parametrize("write_device", devs or [_none("rig has no Modbus device with "
                                                            "points it may write")],
                             ids=lambda d: f"{d.bus}/{d.name}" if d else "none")
    if "lora_bus" in names:
        buses = [b for b in rig.buses if b.driver == "lora_forwarder"]
        metafunc.parametrize("lora_bus", buses or [_none("rig has no lora forwarder")],
                             ids=lambda b: getattr(b, "instance", "none"))


@pytest.fixture(scope="session")
def rig(pytestconfig: pytest.Config) -> Rig:
    return the_rig(pytestconfig)


@pytest.fixture(scope="session")
def bench(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    b = Bench(rig, tmp_path_factory.mktemp("bench"))
    try:
        b.start()
        yield b
    finally:
        b.close()


@pytest.fixture
def up(bench: Bench) -> Bench:
    """The bench with its daemon running and its broker listening."""
    bench.ensure_up()
    return bench


@pytest.fixture
def report(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """Record the one line the summary shows for a passing behaviour."""
    def note(text: str) -> None:
        record_property("summary", text)

    return note
