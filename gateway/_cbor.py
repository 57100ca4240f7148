"""Delta columns written as CBOR bytes directly, for cbor2 to copy into the batch.

cbor2 spends ~30 ns on a small positive int but ~140 ns on a negative one and ~350 ns on a
nested array (its Rust encoder checks each array against ``collections.abc.Mapping``). A
delta column of readings that change by less than 24 per step is one byte per delta, so it
is cheaper to write here: the deltas are already packed as signed bytes (``array("b")``) and
one ``bytes.translate`` turns them into their CBOR. The bytes are what cbor2's canonical
mode writes for the same list (RFC 8949 §4.2.1: shortest heads, definite lengths).
"""

from __future__ import annotations

import re
from typing import Any

import cbor2

from gateway._wire import UINT_END

__all__ = ["Raw", "tiny_array", "write_raw"]

#: The CBOR of the ints -24..23 (RFC 8949 §3.1: the argument in the initial byte), indexed by
#: the int as a two's-complement byte; 0xff (a break code, never an int) marks all others.
_TINY = bytes(b if b < 24 else 0x20 + 255 - b if b >= 232 else 0xFF for b in range(256))
_ARRAY, _NEGATIVE = 0x80, 0x20
_BYTES = [bytes((b,)) for b in range(256)]
_RUN = b"\x82"  # an array of two: [count, delta]
_SAME3 = re.compile(rb"\x00{3,}")  # 3 or more equal neighbours in a row: 4 or more equal items


class Raw:
    """An item that is already CBOR; :func:`write_raw` copies it into cbor2's output."""

    __slots__ = ("cbor",)

    def __init__(self, cbor: bytes) -> None:
        self.cbor = cbor


def write_raw(encoder: Any, value: object) -> None:
    """cbor2's ``default`` hook: writes a :class:`Raw` item; refuses anything else as cbor2
    itself does."""
    if type(value) is not Raw:
        raise cbor2.CBOREncodeError(f"cannot encode type {type(value)}")
    encoder.write(value.cbor)


def _head(major: int, n: int) -> bytes:
    """An initial byte and argument, shortest form; ``0 <= n < 2**64``."""
    if n < 24:
        return _BYTES[major | n]
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2)
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4)
    return bytes((major | 27,)) + n.to_bytes(8)


def _int(v: int) -> bytes | None:
    """A CBOR integer; None for a bignum (left to cbor2)."""
    n = v if v >= 0 else -1 - v
    if n >= UINT_END:
        return None
    return _head(0 if v >= 0 else _NEGATIVE, n)


def tiny_array(prefix: list[int], packed: bytes) -> Raw | None:
    """``[*prefix, *items]`` as CBOR: the items are the ints of ``packed`` (signed bytes), and
    each run of 4 or more equal ones is written ``[count, int]`` (shorter from 4 on: 3 bytes).

    All prefix ints but the last are in 0..23 (a column kind, a decimal count). None unless
    every packed int is in -24..23 and the last prefix int is no bignum. These are the items
    ``gateway._columns.rle`` makes: for one-byte deltas its runs are those of 4 or more.
    """
    items = packed.translate(_TINY)
    first = _int(prefix[-1])
    if first is None or b"\xff" in items:
        return None
    head = bytes(prefix[:-1]) + first
    n = len(packed)
    # A zero byte where an item equals the next: XOR of the bytes and the bytes one further.
    same = (int.from_bytes(packed[1:]) ^ int.from_bytes(packed[:-1])).to_bytes(max(0, n - 1))
    if b"\0\0\0" not in same:
        return Raw(_head(_ARRAY, len(prefix) + n) + head + items)
    parts = [head]
    count = len(prefix) + n
    done = 0
    for run in _SAME3.finditer(same):
        start, end = run.start(), run.end() + 1  # the items start..end are equal
        parts += (items[done:start], _RUN, _head(0, end - start), items[start:start + 1])
        count -= end - start - 1
        done = end
    parts.append(items[done:])
    return Raw(_head(_ARRAY, count) + b"".join(parts))
