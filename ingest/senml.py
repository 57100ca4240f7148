"""Verified readings as SenML JSON (RFC 8428), so the platform side can use standard tooling.

A good reading becomes a resolved-style record: ``n`` (the point, after the pack's base name
``bn`` = ``<gateway_id>/``), ``u``, ``t`` (seconds since the epoch, RFC 8428 §4.5.3) and one
value field: ``v`` (numbers), ``vb`` (bool), ``vs`` (text) or ``vd`` (bytes, base64url without
padding, RFC 8428 §4.3 and RFC 4648 §5).

Extension fields cover what RFC 8428 cannot say. All end in ``_``: RFC 8428 §4.4 makes
such labels must-understand (a receiver that does not know them must fail, not misread),
which is right because these records lack the value field §4.2 otherwise requires, or give
``v`` and ``t`` another meaning:

``q_``
    why a reading carries no measurement: the ``drivers.api.Quality`` name in lower case
    (``"timeout"``, ``"crc_error"``, ``"exception"``, ...). A value field, when present, is
    the diagnostic the device gave (e.g. the Modbus exception code), not a measurement.
``nf_``
    a non-finite float, which JSON cannot carry: ``"nan"``, ``"inf"`` or ``"-inf"``.
``loss_``
    the record reports readings the gateway lost (a ``buffer.types.Loss``), not a
    measurement; its value is the reason (``"power-loss"``, ...). The record has no ``n``:
    its name is the base name, the gateway itself. Its other fields, each absent when
    unknown: ``ep_`` the epoch as decimal text (it may exceed 2**53, beyond what JSON numbers
    keep exactly, RFC 7493 §2.2); ``fs_`` and ``ls_`` the first and last seq (``fs_`` without
    ``ls_``: open-ended, every seq from ``fs_`` on not received; neither: readings that never
    got a seq); ``v`` how many readings; ``t`` and ``et_`` the start and end of their time
    range, in seconds like ``t``.

``clk_``
    ``"unsynced"``: the reading was stamped before the gateway's clock synced, so its ``t``
    is not a true time (and a ``t`` below 2**28 would read as relative to now, RFC 8428
    §4.5.3). The batch's clock spans give the correction once it is known.

Pass ``include_bad=False`` for packs that any RFC 8428 receiver accepts: no extension field
at all. Bad-quality readings, readings without a finite value, readings stamped before 2**28
seconds since the epoch (an unsynchronized clock) and loss records are then left out.

:func:`senml_cbor` gives the same pack as SenML CBOR (``application/senml+cbor``, RFC 8428
§6): integer labels for the RFC's fields, ``vd`` as a byte string, extension labels as text.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import TYPE_CHECKING, Any

from drivers.api import Quality, Reading

if TYPE_CHECKING:
    from collections.abc import Iterable

    from buffer.types import Loss
    from drivers.api import Value

__all__ = ["CLOCK_FIELD", "LOSS_FIELD", "NONFINITE_FIELD", "QUALITY_FIELD", "SenMLError",
           "senml_cbor", "senml_json", "senml_records"]

QUALITY_FIELD = "q_"
CLOCK_FIELD = "clk_"
#: RFC 8428 §4.5.3: a time below 2**28 s is relative to the receiver's now.
_ABSOLUTE_MS = 2**28 * 1000
NONFINITE_FIELD = "nf_"
LOSS_FIELD = "loss_"
# RFC 8428 §4.5.1: the concatenated name's character set and first character.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")


class SenMLError(ValueError):
    """A reading that cannot be written as valid SenML (e.g. a name outside RFC 8428 §4.5.1)."""


_LABELS: dict[type, str] = {bool: "vb", int: "v", float: "v", str: "vs", bytes: "vd"}


def _value_fields(value: Value) -> dict[str, Any]:
    if isinstance(value, float) and not math.isfinite(value):
        return {NONFINITE_FIELD: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, bytes):
        return {"vd": base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")}
    label = _LABELS.get(type(value))
    return {} if label is None else {label: value}


def _record(reading: Reading) -> dict[str, Any]:
    rec: dict[str, Any] = {"n": reading.point}
    if reading.unit is not None:
        rec["u"] = reading.unit
    rec["t"] = reading.ts / 1000
    if reading.ts < _ABSOLUTE_MS:
        rec[CLOCK_FIELD] = "unsynced"
    rec.update(_value_fields(reading.value))
    if reading.quality != Quality.GOOD:
        rec[QUALITY_FIELD] = Quality(reading.quality).name.lower()
    elif reading.value is None:
        rec[QUALITY_FIELD] = "empty"  # a good reading without a value: say so, never v=0
    return rec


def _plain(reading: Reading) -> bool:
    """Whether plain RFC 8428 fields alone say all there is to say about ``reading``."""
    value = reading.value
    return (reading.quality == Quality.GOOD and value is not None
            and not (isinstance(value, float) and not math.isfinite(value))
            and reading.ts >= _ABSOLUTE_MS)


def _loss_record(loss: Loss) -> dict[str, Any]:
    rec: dict[str, Any] = {LOSS_FIELD: loss.reason, "ep_": str(loss.epoch)}
    optional = (("fs_", loss.first_seq), ("ls_", loss.last_seq), ("v", loss.count),
                ("t", None if loss.first_ts is None else loss.first_ts / 1000),
                ("et_", None if loss.last_ts is None else loss.last_ts / 1000))
    rec.update((label, v) for label, v in optional if v is not None)
    return rec


def senml_records(gateway_id: str, readings: Iterable[Reading | tuple[int, Reading]], *,
                  include_bad: bool = True, losses: Iterable[Loss] = ()) -> list[dict[str, Any]]:
    """SenML records for ``readings`` (``Reading`` or ``(seq, Reading)``), then ``losses``.

    The first record carries the base name. Loss records are left out with ``include_bad=False``.
    """
    base = f"{gateway_id}/"
    out: list[dict[str, Any]] = []
    for item in readings:
        reading = item if isinstance(item, Reading) else item[1]
        if not include_bad and not _plain(reading):
            continue
        if not _NAME.fullmatch(base + reading.point):
            raise SenMLError(f"SenML name {base + reading.point!r} uses characters outside "
                             "A-Z a-z 0-9 - : . / _ (RFC 8428 §4.5.1)")
        rec = _record(reading)
        if not out:
            rec = {"bn": base, **rec}
        out.append(rec)
    for loss in losses if include_bad else ():
        if not _NAME.fullmatch(base):
            raise SenMLError(f"SenML name {base!r} uses characters outside "
                             "A-Z a-z 0-9 - : . / _ (RFC 8428 §4.5.1)")
        rec = _loss_record(loss)
        out.append(rec if out else {"bn": base, **rec})
    return out


def senml_json(gateway_id: str, readings: Iterable[Reading | tuple[int, Reading]], *,
               include_bad: bool = True, losses: Iterable[Loss] = ()) -> str:
    """The SenML pack as compact JSON text (``application/senml+json``, RFC 8428 §5)."""
    return json.dumps(senml_records(gateway_id, readings, include_bad=include_bad,
                                    losses=losses),
                      separators=(",", ":"), allow_nan=False)


#: RFC 8428 §6, Table 4: CBOR labels of the fields this module writes.
_CBOR_LABELS = {"bn": -2, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6, "vd": 8}


def senml_cbor(gateway_id: str, readings: Iterable[Reading | tuple[int, Reading]], *,
               include_bad: bool = True, losses: Iterable[Loss] = ()) -> bytes:
    """The SenML pack as CBOR (``application/senml+cbor``, RFC 8428 §6)."""
    import cbor2  # noqa: PLC0415

    out = []
    for rec in senml_records(gateway_id, readings, include_bad=include_bad, losses=losses):
        item: dict[int | str, Any] = {}
        for label, value in rec.items():
            # §6: vd is a byte string in CBOR, not base64
            item[_CBOR_LABELS.get(label, label)] = base64.urlsafe_b64decode(
                value + "=" * (-len(value) % 4)) if label == "vd" else value
        out.append(item)
    return cbor2.dumps(out)
