"""Synthetic devices: counters, sine waves, random walks, switches."""

from drivers.sim.driver import SimDriver

__all__ = ["SimDriver"]
