"""Driver discovery through the ``streetgate.drivers`` entry-point group (STYLE §2).

Drivers are imported on first use, so a gateway that runs only Modbus never imports the
LoRa stack, and a driver that fails to import is reported by name without stopping others.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from importlib import import_module
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, Protocol

from drivers.api import Driver

__all__ = ["GROUP", "Registry", "load_registry"]

GROUP = "streetgate.drivers"
_log = logging.getLogger("streetgate.drivers")


class _EntryPoint(Protocol):
    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


class Registry:
    def __init__(self, eps: dict[str, _EntryPoint]) -> None:
        self._eps = eps
        self._loaded: dict[str, type[Driver[Any]]] = {}
        #: Entry points that failed to load: name -> "module:attr: error".
        self.broken: dict[str, str] = {}

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

        return Registry({ep.name: ep for ep in entry_points(group=GROUP)})
    return Registry({name: _PathEntryPoint(value) for name, value in found})


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
