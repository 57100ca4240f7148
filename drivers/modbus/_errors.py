"""Every failure of a Modbus transaction, mapped to a reading Quality in this one place.

The link layer (``_link``) raises only the errors below; :func:`classify` also accepts what
pymodbus, pyserial and asyncio may raise around it::

    ModbusError                                  Quality        value  health counter
    ├── ExceptionCodeError(code)   exception PDU EXCEPTION      code   exception
    ├── ResponseTimeoutError       no answer     TIMEOUT        None   timeout
    ├── CrcError                   CRC mismatch  CRC_ERROR      None   crc_error
    ├── MalformedFrameError        short/broken  MALFORMED      None   malformed
    │   └── InconsistentAnswerError  wrong answer MALFORMED    None   malformed
    └── PortUnavailableError       no port/peer  UNAVAILABLE    None   unavailable
        └── ConnectionLostError    dropped link  UNAVAILABLE    None   unavailable
    TimeoutError (asyncio)                       TIMEOUT        None   timeout
    pymodbus ModbusIOException / ModbusException MALFORMED      None   malformed
    ValueError, IndexError, struct.error         MALFORMED      None   malformed
    OSError (serial.SerialException)             UNAVAILABLE    None   unavailable

A write that fails becomes a :class:`~drivers.api.WriteError` (:func:`write_failure`)::

    ExceptionCodeError(code)       device-error, code = the exception code
    InconsistentAnswerError        device-error  (a whole, valid frame that does not answer
                                                  the request: wrong function, echo differs)
    ResponseTimeoutError, TimeoutError, CrcError, MalformedFrameError
                                   timeout       (no usable answer: the write may or may not
                                                  have happened; repeating it is safe, as a
                                                  write sets a value and does not add to one)
    PortUnavailableError, OSError  unavailable

Exception codes are the device's word (Modbus Application Protocol V1.1b3 §7): 1 illegal
function, 2 illegal data address, 3 illegal data value, 4 device failure, 6 busy,
10/11 gateway path unavailable / target failed to respond.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pymodbus.exceptions import ModbusException

from drivers.api import Quality, Value, WriteError

__all__ = [
    "EXCEPTION_NAMES",
    "ConnectionLostError",
    "CrcError",
    "ExceptionCodeError",
    "Failure",
    "InconsistentAnswerError",
    "MalformedFrameError",
    "ModbusError",
    "PortUnavailableError",
    "ResponseTimeoutError",
    "classify",
    "write_failure",
]

#: Modbus Application Protocol V1.1b3 §7.
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(Exception):
    """A transaction that did not yield data."""


class ExceptionCodeError(ModbusError):
    """The device answered with an exception PDU."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


class ResponseTimeoutError(ModbusError):
    """Nothing (or nothing for us) arrived in time."""


class CrcError(ModbusError):
    """A complete RTU frame whose CRC does not match (pymodbus FramerRTU.check_CRC)."""


class MalformedFrameError(ModbusError):
    """A short, undecodable or inconsistent answer."""


class InconsistentAnswerError(MalformedFrameError):
    """A frame that decodes but does not answer the request (function, count or echo)."""


class PortUnavailableError(ModbusError):
    """The serial port or TCP peer is not there."""


class ConnectionLostError(PortUnavailableError):
    """The link dropped while a request was outstanding."""


@dataclass(frozen=True, slots=True)
class Failure:
    """How one failed transaction shows up: in the readings and in health."""

    quality: Quality
    value: Value
    counter: str
    message: str

    @property
    def retryable(self) -> bool:
        """Worth another attempt now: a lost or garbled frame, not a device's refusal."""
        return self.quality in (Quality.TIMEOUT, Quality.CRC_ERROR, Quality.MALFORMED)

    @property
    def silent(self) -> bool:
        """The device gave no sign of life."""
        return self.quality in (Quality.TIMEOUT, Quality.UNAVAILABLE)


def classify(exc: BaseException) -> Failure:
    """The Failure for an exception raised by a transaction."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ExceptionCodeError):
        return Failure(Quality.EXCEPTION, exc.code, "exception", text)
    if isinstance(exc, ResponseTimeoutError | TimeoutError):
        return Failure(Quality.TIMEOUT, None, "timeout", "no answer")
    if isinstance(exc, CrcError):
        return Failure(Quality.CRC_ERROR, None, "crc_error", text)
    if isinstance(exc, PortUnavailableError):
        return Failure(Quality.UNAVAILABLE, None, "unavailable", text)
    if isinstance(exc, MalformedFrameError | ModbusException | ValueError | IndexError
                  | struct.error):
        return Failure(Quality.MALFORMED, None, "malformed", text)
    if isinstance(exc, OSError):
        return Failure(Quality.UNAVAILABLE, None, "unavailable", text)
    raise TypeError(f"not a Modbus transaction error: {exc!r}") from exc


def write_failure(exc: BaseException, stage: str = "") -> WriteError:
    """The WriteError for a failed write or read-back; ``stage`` prefixes the detail."""
    failure = classify(exc)
    if isinstance(exc, ExceptionCodeError):
        return WriteError("device-error", stage + failure.message, code=exc.code)
    if isinstance(exc, InconsistentAnswerError):
        return WriteError("device-error", stage + failure.message)
    if failure.quality is Quality.UNAVAILABLE:
        return WriteError("unavailable", stage + failure.message)
    detail = "no answer" if failure.quality is Quality.TIMEOUT else \
        f"no usable answer ({failure.message})"
    return WriteError("timeout", stage + detail)
