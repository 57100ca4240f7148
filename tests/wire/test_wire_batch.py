"""The CBOR batch: exact round trips, strict decoding, and bytes per reading."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer.types import Gap, Loss, Row
from drivers.api import Quality
from gateway.batch import FORMAT_VERSION, MAX_READINGS, BatchFormatError, decode_batch, encode_batch
from gateway.cose import kid_for, sign1
from tests.wire.workload import GATEWAY_ID, demo_rows

if TYPE_CHECKING:
    from collections.abc import Sequence


def same_value(a: Any, b: Any) -> bool:
    """Equal, same type, same float sign; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def assert_same_rows(got: Sequence[Row], want: Sequence[Row]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, sorted(want), strict=True):
        assert g[:4] == w[:4], (g, w)
        assert g[5] == w[5], (g, w)
        assert same_value(g[4], w[4]), (g, w)


def roundtrip(rows: Sequence[Row], gaps: list[Gap] | None = None, **kw: Any) -> list[Row]:
    payload = encode_batch(gateway_id="gw-1", epoch=3, batch_seq=9, rows=rows, gaps=gaps or (),
                           **kw)
    batch = decode_batch(payload)
    assert (batch.version, batch.gateway_id, batch.epoch, batch.batch_seq) == (
        FORMAT_VERSION, "gw-1", 3, 9)
    assert batch.gaps == list(gaps or [])
    return batch.rows()


# ---------------------------------------------------------------- round trips

_any_value = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(width=32),
    st.text(max_size=6), st.binary(max_size=6),
    st.builds(lambda m, k: round(m / 10**k, k), st.integers(-(10**7), 10**7),
              st.integers(0, 4)),
)
# A series of one kind hits the int-delta and scaled-decimal columns, mixed ones the plain one.
_series_values = st.one_of(
    st.lists(st.integers(-(2**64), 2**64), min_size=1, max_size=12),
    st.lists(st.integers(0, 40), min_size=1, max_size=12),
    st.lists(st.builds(lambda m: m / 100, st.integers(-(10**6), 10**6)), min_size=1,
             max_size=12),
    st.lists(st.sampled_from([0.0, -0.0, 1.5, 2.25]), min_size=1, max_size=12),
    st.lists(st.booleans(), min_size=1, max_size=12),
    st.lists(_any_value, min_size=1, max_size=12),
)
_quality = st.sampled_from([0, 0, 0, 0, *[int(q) for q in Quality if q]])
_name = st.lists(st.sampled_from(["cab-1", "dev-000", "energy", "", "V", "a" * 30]), min_size=1,
                 max_size=4).map("/".join)


@st.composite
def batches(draw: st.DrawFn) -> list[Row]:
    series = draw(st.lists(st.tuples(_name, st.sampled_from([None, "V", "Cel", ""]),
                                     _series_values), min_size=1, max_size=6,
                           unique_by=lambda s: (s[0], s[1])))
    total = sum(len(vals) for _n, _u, vals in series)
    seqs = sorted(draw(st.sets(st.integers(0, 2**40), min_size=total, max_size=total)))
    order = draw(st.permutations(range(total)))
    rows: list[Row] = []
    k = 0
    for name, unit, vals in series:
        ts = draw(st.integers(-(2**45), 2**45))
        for v in vals:
            ts += draw(st.sampled_from([1000, 1000, 999, 0, -5, 2**33]))
            rows.append((seqs[order[k]], name, unit, ts, v, draw(_quality)))
            k += 1
    return rows


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_decode_reproduces_every_row_exactly(rows: list[Row]) -> None:
    assert_same_rows(roundtrip(rows), rows)


def test_edge_values_keep_type_and_bits() -> None:
    values: list[Any] = [True, 1, 1.0, -0.0, 0.0, math.nan, math.inf, -math.inf, 2**64,
                         -(2**64) - 1, 2**200, "", b"", "ü", b"\x00\xff", None, 5e-324,
                         0.1 + 0.2, 1e300]
    rows: list[Row] = [(i, "p", None, 1000 + i, v, 0) for i, v in enumerate(values)]
    assert_same_rows(roundtrip(rows), rows)


def test_bad_quality_keeps_its_value_and_code() -> None:
    rows = [(1, "m/x", "V", 10, 230.5, 0), (2, "m/x", "V", 20, None, int(Quality.TIMEOUT)),
            (3, "m/x", "V", 30, 2, int(Quality.EXCEPTION)), (4, "m/x", "V", 40, 231.0, 0)]
    got = decode_batch(encode_batch(gateway_id="g", epoch=0, batch_seq=0, rows=rows))
    assert [r.quality for _s, r in got.readings] == [
        Quality.GOOD, Quality.TIMEOUT, Quality.EXCEPTION, Quality.GOOD]
    assert got.rows() == rows


def test_subclassed_values_and_qualities_travel_as_their_base_types() -> None:
    rows: list[Any] = [(1, "p", None, 1, Quality.TIMEOUT, 0), (2, "p", None, 2, bytearray(b"x"), 0),
                       (3, "p", None, 3, 5, Quality.EXCEPTION)]
    got = decode_batch(encode_batch(gateway_id="g", epoch=0, batch_seq=0, rows=rows)).rows()
    assert got == [(1, "p", None, 1, 1, 0), (2, "p", None, 2, b"x", 0), (3, "p", None, 3, 5, 6)]
    assert [type(r[4]) for r in got] == [int, bytes, int]


def test_gaps_and_extra_keys_round_trip() -> None:
    gaps = [Gap(1, 40, 40, 1000, 5000, ("a/b", "a/c"), True), Gap(41, 41, 1, 6000, 6000)]
    rows = [(50, "a/b", None, 7000, 1, 0)]
    payload = encode_batch(gateway_id="g", epoch=1, batch_seq=2, rows=rows, gaps=gaps,
                           extra={9: {"sync": False}, -70000: b"private"})
    batch = decode_batch(payload)
    assert batch.gaps == gaps
    assert (batch.first_seq, batch.last_seq) == (1, 50)
    assert batch.extra == {9: {"sync": False}, -70000: b"private"}


def test_empty_batch_has_no_range() -> None:
    batch = decode_batch(encode_batch(gateway_id="g", epoch=1, batch_seq=2, rows=[]))
    assert (batch.first_seq, batch.last_seq, batch.readings, batch.gaps) == (None, None, [], [])


# ---------------------------------------------------------------- encoding rules


def _doc(rows: Sequence[Row]) -> dict[int, Any]:
    doc: dict[int, Any] = cbor2.loads(encode_batch(gateway_id="g", epoch=1, batch_seq=1,
                                                   rows=rows))
    return doc


def test_lockstep_series_cost_nothing_per_reading_for_seq_and_time() -> None:
    rows = demo_rows(points=8, readings=8 * 50)
    series = _doc(rows)[7]
    assert series[0][2] == [0, [49, 8]]  # seqs: first, then one run of 49 deltas of 8
    assert all(s[3] == 1 for s in series[1:])  # timestamps: "same as the previous series"
    voltage = series[1]
    assert voltage[4][:2] == [2, 2]  # scaled decimal column with 2 decimals


def test_floats_that_are_not_short_decimals_stay_plain_and_exact() -> None:
    vals = [0.1 + 0.2, 1 / 3, 2.5]
    rows: list[Row] = [(i, "p", None, i, v, 0) for i, v in enumerate(vals)]
    assert _doc(rows)[7][0][4][0] == 0  # plain column
    assert_same_rows(roundtrip(rows), rows)


@pytest.mark.parametrize(("rows", "extra", "message"), [
    ([(1, "p", None, 1, 1, 0), (1, "q", None, 1, 1, 0)], None, "unique"),
    ([(1, "p", None, 1, 1, 99)], None, "quality 99"),
    ([(1, "p", None, 1, [1], 0)], None, "values must be"),
    ([(1, "p", None, 1, 1, True)], None, "quality True"),
    ([(1, "p", None, 1.5, 1, 0)], None, "timestamps"),
    ([(-1, "p", None, 1, 1, 0)], None, "non-negative"),
    ([], {3: 1}, "core keys"),
])
def test_encoder_refuses_bad_input(rows: list[Any], extra: dict[int, Any] | None,
                                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_batch(gateway_id="g", epoch=1, batch_seq=1, rows=rows, extra=extra)


# ---------------------------------------------------------------- strict decoding

_GOOD_DOC: dict[int, Any] = {0: 1, 1: "g", 2: 1, 3: 1, 4: 10, 5: 12, 6: 1000,
                             7: [[["p"], None, [0, 1, 1], [0, 5, 5], [1, 7, 1, 1]]]}


_TEXT_KEY_DOC: dict[Any, Any] = {**_GOOD_DOC, "x": 1}


def _with(path: tuple[Any, ...], value: Any) -> dict[int, Any]:
    doc = cbor2.loads(cbor2.dumps(_GOOD_DOC))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc  # type: ignore[no-any-return]


@pytest.mark.parametrize(("doc", "message"), [
    (_with((0,), 2), "format version 2 is not supported"),
    (_with((1,), ""), "gateway_id"),
    (_with((2,), -1), "epoch"),
    (_with((5,), 11), "at most 2 values"),
    (_with((7, 0, 2), [0, 1, 0]), "positive delta"),
    (_with((7, 0, 2), [0, [2**40, 1]]), "at most 3 values"),
    (_with((7, 0, 3), 1), "back-reference"),
    (_with((7, 0, 3), [0, 5]), "3 timestamps"),
    (_with((7, 0, 4), [7, 1]), "kind 0, 1 or 2"),
    (_with((7, 0, 4), [0, 1, [1, [2]], 3]), "bool, int, float"),
    (_with((7, 0, 4), [0, 1, {1: 2}, 3]), "bool, int, float"),
    (_with((7, 0, 4), [2, 16, 1, 1, 1]), "decimal exponent"),
    (_with((7, 0, 4), [2, 2, 2**60, 1, 1]), "mantissas"),
    (_with((7, 0, 0), [3]), "string index"),
    (_with((7, 0), [["p"], None, [0, 1, 1], [0, 5, 5], [0, 1], {0: [[0, 99]]}]), "quality"),
    (_with((7, 0), [["p"], None, [0, 1, 1], [0, 5, 5], [0, 1], {0: [[0, 1, 2], [1, 1]]}]),
     "non-overlapping"),
    (_with((8,), [[1, 2, 2, 0, 0, [], False]]), "inside the batch"),
    (_TEXT_KEY_DOC, "integer map keys"),
])
def test_decoder_names_what_is_wrong(doc: dict[Any, Any], message: str) -> None:
    with pytest.raises(BatchFormatError, match=message):
        decode_batch(cbor2.dumps(doc))


@pytest.mark.parametrize(("payload", "message"), [
    (cbor2.dumps(_GOOD_DOC) + b"\x00", "trailing"),
    (b"\xbf\x00\x01\xff", "indefinite"),
    (cbor2.dumps({**_GOOD_DOC, 9: cbor2.CBORTag(1, 0)}), "tag"),
    (b"\xa2\x00\x01\x00\x01", "Duplicate"),
    (b"", "not valid CBOR"),
])
def test_decoder_refuses_loose_cbor(payload: bytes, message: str) -> None:
    with pytest.raises(BatchFormatError, match=message):
        decode_batch(payload)


def test_good_doc_fixture_decodes() -> None:
    rows = decode_batch(cbor2.dumps(_GOOD_DOC)).rows()
    assert rows == [(10, "p", None, 1000, 7, 0), (11, "p", None, 1005, 8, 0),
                    (12, "p", None, 1010, 9, 0)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_payloads_fail_only_with_batch_format_error(data: st.DataObject) -> None:
    payload = bytearray(encode_batch(gateway_id="g", epoch=1, batch_seq=1,
                                     rows=demo_rows(points=6, readings=30),
                                     gaps=[Gap(0, 0, 1, 5, 5, ("x",))]))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(payload)))
    with contextlib.suppress(BatchFormatError):  # anything else fails the test
        decode_batch(bytes(payload[:cut]))


_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=3)
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(-2, 9), inner,
                                                                 max_size=3),
    max_leaves=8)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, list):
        for i, child in enumerate(node):
            out += _paths(child, (*prefix, i))
    elif isinstance(node, dict):
        for k, child in node.items():
            out += _paths(child, (*prefix, k))
    return out


_RICH_DOC: dict[int, Any] = cbor2.loads(encode_batch(
    gateway_id="g", epoch=1, batch_seq=1, gaps=[Gap(1, 2, 2, 0, 1, ("a",))],
    losses=[Loss(0, 3, None, None, 0, None, "moved-aside"), Loss(1, None, None, 2, 5, 6, "r")],
    rows=[(10, "a/b", "V", 5, 1.25, 0), (11, "a/b", "V", 6, None, 1), (12, "a/c", None, 5, 7, 0),
          (13, "a/c", None, 6, 9, 6), (14, "a/d", None, 5, True, 0)]))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_structurally_wrong_batches_fail_only_with_batch_format_error(data: st.DataObject,
                                                                      ) -> None:
    doc = cbor2.loads(cbor2.dumps(_RICH_DOC))
    path = data.draw(st.sampled_from(_paths(doc)))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(_junk)
    with contextlib.suppress(BatchFormatError):  # anything else fails the test
        decode_batch(cbor2.dumps(doc))


def test_reading_limit_is_enforced_both_ways() -> None:
    with pytest.raises(ValueError, match="exceed"):
        encode_batch(gateway_id="g", epoch=1, batch_seq=1,
                     rows=[(0, "p", None, 0, 0, 0)] * (MAX_READINGS + 1))
    doc = {0: 1, 1: "g", 2: 1, 3: 1, 4: 0, 5: 2**40, 6: 0,
           7: [[["p"], None, [0, [MAX_READINGS, 1]], [0, [MAX_READINGS, 0]], [0, [2**20 + 1, 0]]]]}
    with pytest.raises(BatchFormatError, match=f"at most {MAX_READINGS}"):
        decode_batch(cbor2.dumps(doc))


# ---------------------------------------------------------------- size on the wire


@pytest.mark.parametrize(("points", "per_batch"), [(52, 1000), (100, 1000), (200, 1000),
                                                  (200, 5000), (50, 5000)])
def test_demo_workload_costs_under_8_bytes_per_reading_signed(points: int, per_batch: int,
                                                              ) -> None:
    key = Ed25519PrivateKey.generate()
    kid = kid_for(key.public_key())
    rows = demo_rows(points=points, readings=per_batch * 3)
    sizes = [len(sign1(encode_batch(gateway_id=GATEWAY_ID, epoch=1, batch_seq=n,
                                    rows=rows[i:i + per_batch]), key, kid))
             for n, i in enumerate(range(0, len(rows), per_batch))]
    per_reading = sum(sizes) / len(rows)
    assert per_reading < 8, f"{per_reading:.2f} bytes/reading"


# ---------------------------------------------------------------- the documented example

_DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def _doc_example_rows() -> list[Row]:
    t0 = 1733000001000
    energy, volt, door = ("cab-0042/meter-1/energy", "Wh"), ("cab-0042/meter-1/voltage_l1",
                                                             "V"), ("cab-0042/door", None)
    rows: list[Row] = []
    for i, (e, v, q) in enumerate([(120345, 230.12, 0), (120347, 230.15, 0), (120350, None, 1)]):
        ts = t0 + 1000 * i + (2 if i == 2 else 0)
        rows += [(101 + 3 * i, *energy, ts, e, 0), (102 + 3 * i, *volt, ts, v, q),
                 (103 + 3 * i, *door, ts, False, 0)]
    return rows


def test_the_documented_example_is_what_the_encoder_writes() -> None:
    gap = Gap(90, 100, 11, 1732999990000, 1733000000000,
              ("cab-0042/meter-1/energy", "cab-0042/meter-1/voltage_l1", "cab-0042/door"))
    payload = encode_batch(gateway_id="cab-0042", epoch=1733000000, batch_seq=17,
                           rows=_doc_example_rows(), gaps=[gap])
    assert cbor2.loads(payload) == {
        0: 1, 1: "cab-0042", 2: 1733000000, 3: 17, 4: 90, 5: 109, 6: 1733000001000,
        7: [[["cab-0042", "meter-1", "energy"], "Wh", [11, 3, 3], [0, 1000, 1002],
             [1, 120345, 2, 3]],
            [[0, 1, "voltage_l1"], "V", [1, 3, 3], 1, [2, 2, 23012, 3], {0: [[2, 1]]}],
            [[0, "door"], None, [1, 3, 3], 1, [0, [3, False]]]],
        8: [[90, 100, 11, 1732999990000, 1733000000000, list(gap.points), False]]}
    assert f"The payload ({len(payload)} bytes" in _DOC.read_text(encoding="utf-8")
    assert decode_batch(payload).rows() == _doc_example_rows()
