"""Serial devices: NMEA 0183, regex, key=value and binary frames over RS-232/RS-485/USB."""

from drivers.serial.driver import SerialDriver

__all__ = ["SerialDriver"]
