"""The rig firmware's core run on this computer over pty pairs (see hil_tests/firmware)."""

from hil_tests.firmware.hostctl import FIRMWARE, FirmwareHost

__all__ = ["FIRMWARE", "FirmwareHost"]
