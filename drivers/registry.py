"""Driver discovery through the ``streetgate.drivers`` entry-point group (STYLE §2).

Drivers are imported on first use, so a gateway that runs only Modbus never imports the
LoRa stack, and a driver that fails to import is reported by name without stopping others.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from drivers.api import Driver

__all__ = ["GROUP", "Registry", "load_registry"]

GROUP = "streetgate.drivers"
_log = logging.getLogger("streetgate.drivers")


class Registry:
    def __init__(self, eps: dict[str, EntryPoint]) -> None:
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
    return Registry({ep.name: ep for ep in entry_points(group=GROUP)})
