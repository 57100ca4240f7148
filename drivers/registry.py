"""Driver discovery through the ``streetgate.drivers`` entry-point group (STYLE §2).

Drivers are imported on first use, so a gateway that runs only Modbus never imports the
LoRa stack, and a driver that fails to import is reported by name without stopping others.

The built-in drivers' names are reserved: a plugin registering one of them is refused (the
built-in stays), and so are plugins that register the same name as each other. Either way
the refusal names the entry points, once per process, and ``Registry.refused`` keeps it.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from importlib import import_module
from importlib.machinery import PathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drivers.api import Driver

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["BUILTIN", "GROUP", "Registry", "load_registry"]

GROUP = "streetgate.drivers"
_log = logging.getLogger("streetgate.drivers")

#: The drivers streetgate itself registers (pyproject.toml), by name: no plugin may take these.
BUILTIN = {
    "sim": "drivers.sim:SimDriver",
    "modbus": "drivers.modbus:ModbusDriver",
    "serial": "drivers.serial:SerialDriver",
    "lora_forwarder": "drivers.lora:LoraForwarderDriver",
    "lora_modem": "drivers.lora:LoraModemDriver",
}
_warned: set[str] = set()


class _EntryPoint(Protocol):
    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


class Registry:
    def __init__(self, eps: dict[str, _EntryPoint],
                 refused: dict[str, str] | None = None) -> None:
        self._eps = eps
        self._loaded: dict[str, type[Driver[Any]]] = {}
        #: Entry points that failed to load: name -> "module:attr: error".
        self.broken: dict[str, str] = {}
        #: Plugins not used because their name is taken: name -> why, naming them.
        self.refused: dict[str, str] = dict(refused or {})

    @property
    def names(self) -> list[str]:
        return sorted(self._eps)

    def get(self, name: str) -> type[Driver[Any]] | None:
        if name in self._loaded:
            return self._loaded[name]
        ep = self._eps.get(name)
        if ep is None or name in self.broken:
            return None
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a third-party import error must not stop the rest
            self._broken(name, f"{ep.value}: {type(exc).__name__}: {exc}")
            return None
        if not (isinstance(cls, type) and issubclass(cls, Driver)):
            self._broken(name, f"{ep.value}: not a drivers.api.Driver subclass")
            return None
        if cls.name != name:
            self._broken(name, f"{ep.value}: class says name {cls.name!r}")
            return None
        self._loaded[name] = cls
        return cls

    def _broken(self, name: str, why: str) -> None:
        self.broken[name] = why
        _log.warning("driver %s failed to load: %s", name, why)

    @property
    def drivers(self) -> dict[str, type[Driver[Any]]]:
        """Every driver that loads (imports them all)."""
        out = {}
        for name in self.names:
            cls = self.get(name)
            if cls is not None:
                out[name] = cls
        return out


def load_registry() -> Registry:
    found = _scan(GROUP)
    if found is None:
        from importlib.metadata import entry_points  # noqa: PLC0415 - see _scan

        pairs: list[tuple[str, _EntryPoint]] = [(ep.name, ep) for ep in entry_points(group=GROUP)]
    else:
        pairs = [(name, _PathEntryPoint(value)) for name, value in found]
    eps, refused = resolve_names(pairs)
    for why in refused.values():
        if why not in _warned:
            _warned.add(why)
            _log.warning("%s", why)
    return Registry(eps, refused)


def _same(a: str, b: str) -> bool:
    return re.sub(r"\s+", "", a) == re.sub(r"\s+", "", b)


def resolve_names(pairs: Iterable[tuple[str, _EntryPoint]],
                  ) -> tuple[dict[str, _EntryPoint], dict[str, str]]:
    """One entry point per name: built-ins keep theirs, a name two plugins claim is refused.

    Returns the entry points to use and, for each refused name, a sentence naming the plugins.
    """
    claims: dict[str, list[_EntryPoint]] = {}
    for name, ep in pairs:
        same = any(_same(ep.value, other.value) for other in claims.get(name, []))
        if not same:  # one distribution seen twice on sys.path claims nothing twice
            claims.setdefault(name, []).append(ep)
    eps: dict[str, _EntryPoint] = {}
    refused: dict[str, str] = {}
    for name, found in claims.items():
        builtin = BUILTIN.get(name)
        if builtin is not None:
            plugins = [ep for ep in found if not _same(ep.value, builtin)]
            eps[name] = next((ep for ep in found if _same(ep.value, builtin)),
                             _PathEntryPoint(builtin))
            if plugins:
                values = ", ".join(sorted(ep.value for ep in plugins))
                refused[name] = (f"driver plugin {name} = {values} refused: {name!r} is the "
                                 f"name of a built-in driver, which stays in use; rename the "
                                 f"plugin's entry point in the {GROUP!r} group (and its "
                                 f"class's name)")
        elif len(found) > 1:
            values = " and ".join(sorted(ep.value for ep in found))
            refused[name] = (f"driver plugins {values} refused: both register the name "
                             f"{name!r}; uninstall one, or rename its entry point in the "
                             f"{GROUP!r} group (and its class's name)")
        else:
            eps[name] = found[0]
    return eps, refused


# -- entry points without importlib.metadata ------------------------------------------------
# importlib.metadata imports email, zipfile, csv and importlib.resources: ~1 MB resident for
# the daemon's whole life, to read a few text files once. _scan reads them as it does
# (importlib/metadata/__init__.py of CPython 3.11: Lookup, PathDistribution, Sectioned,
# EntryPoint.pattern); tests/drivers/test_registry.py checks both agree.
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


class _PathEntryPoint:
    """One ``name = module:attr`` line of an ``entry_points.txt``."""

    def __init__(self, value: str) -> None:
        self.value = value

    def load(self) -> Any:
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"not an entry point reference: {self.value!r}")
        module = import_module(match.group("module"))
        attrs = filter(None, (match.group("attr") or "").split("."))
        return functools.reduce(getattr, attrs, module)


def _scan(group: str) -> list[tuple[str, str]] | None:
    """``(name, value)`` of ``group`` in every distribution on sys.path, in the order
    ``importlib.metadata.entry_points`` gives them (the first distribution of a name wins).

    None when distributions may live where only importlib.metadata looks: a zip archive or
    an egg on sys.path, or a meta path finder of its own with ``find_distributions``.
    """
    if any(hasattr(f, "find_distributions") for f in sys.meta_path if f is not PathFinder):
        return None
    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for entry in sys.path:
        root = Path(entry or ".")
        if root.name.lower().endswith(".egg"):
            return None
        try:
            children = list(root.iterdir())
        except NotADirectoryError:
            return None  # a zip archive
        except OSError:
            continue  # absent or unreadable: importlib.metadata skips it as well
        for child in children:
            low = child.name.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            dist = re.sub(r"[-_.]+", "_", low.rpartition(".")[0].partition("-")[0])
            if dist in seen:
                continue
            seen.add(dist)
            found.extend(_section(child / "entry_points.txt", group))
    return found


def _section(path: Path, group: str) -> list[tuple[str, str]]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError:
        return []
    out: list[tuple[str, str]] = []
    section = None
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section == group:
            name, _, value = line.partition("=")
            out.append((name.strip(), value.strip()))
    return out
