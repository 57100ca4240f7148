"""Modbus RTU and TCP devices: energy meters, lighting controllers, I/O modules."""

from drivers.modbus.driver import ModbusDriver

__all__ = ["ModbusDriver"]
