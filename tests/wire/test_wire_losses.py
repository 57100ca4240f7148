"""Loss records (batch key 11): every shape round trips, the decoder refuses what the CDDL does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

from buffer.types import LOSS_REASONS, Gap, Loss, Row
from gateway.batch import MAX_LOSSES, BatchFormatError, decode_batch, encode_batch

EXACT = Loss(7, 90, 100, 11, 1_733_000_000_000, 1_733_000_010_000, "history-lost")
OPEN = Loss(7, 101, None, None, 1_733_000_011_000, None, "moved-aside")
NO_SEQ = Loss(8, None, None, 3, 1_733_000_020_000, 1_733_000_020_500, "exit-unwritten")
UNKNOWN = Loss(2**63 + 5, None, None, None, None, None, "x" * 64)
SHAPES = [EXACT, OPEN, NO_SEQ, UNKNOWN, Loss(0, 0, 0, 0, -5, -1, "power-loss")]


def _encode(losses: list[Loss], *, rows: list[Row] | None = None, gaps: list[Gap] | None = None,
            extra: dict[int, Any] | None = None) -> bytes:
    return encode_batch(gateway_id="gw-1", epoch=8, batch_seq=3, rows=rows or [],
                        gaps=gaps or (), losses=losses, extra=extra)


def test_every_shape_of_loss_record_round_trips() -> None:
    batch = decode_batch(_encode(SHAPES))
    assert batch.losses == SHAPES
    assert cbor2.loads(_encode(SHAPES))[11][1] == [7, 101, None, None, 1_733_000_011_000, None,
                                                   "moved-aside"]


def test_the_store_handle_is_not_sent() -> None:
    sent = Loss(7, 90, 100, 11, 1, 2, "unclean-stop", key=42)
    (got,) = decode_batch(_encode([sent])).losses
    assert (got.key, got.reason, got.first_seq) == (0, "unclean-stop", 90)
    assert 42 not in cbor2.loads(_encode([sent]))[11][0]


def test_a_loss_only_batch_has_no_seq_range_and_no_readings() -> None:
    doc = cbor2.loads(_encode([EXACT]))
    assert set(doc) == {0, 1, 2, 3, 11}
    batch = decode_batch(_encode([EXACT]))
    assert (batch.first_seq, batch.last_seq, batch.readings, batch.gaps) == (None, None, [], [])
    assert batch.extra == {}


def test_losses_do_not_widen_the_batch_range() -> None:
    rows: list[Row] = [(500, "a/b", None, 1000, 1, 0)]
    payload = _encode([EXACT, OPEN], rows=rows, gaps=[Gap(498, 499, 2, 900, 950)])
    batch = decode_batch(payload)
    assert (batch.first_seq, batch.last_seq) == (498, 500)  # losses 90-100 and 101- lie outside
    assert batch.losses == [EXACT, OPEN]
    assert batch.rows() == rows


def test_an_empty_loss_list_is_not_written() -> None:
    assert 11 not in cbor2.loads(_encode([]))
    assert decode_batch(_encode([])).losses == []


def test_key_11_is_a_core_key() -> None:
    with pytest.raises(ValueError, match="core keys"):
        _encode([], extra={11: []})


@pytest.mark.parametrize(("loss", "message"), [
    (Loss(1, None, 5, None, None, None, "power-loss"), "last_seq needs a first_seq"),
    (Loss(1, 9, 8, None, None, None, "power-loss"), "last_seq needs a first_seq"),
    (Loss(1, 1, 2, 2, None, None, ""), "reason"),
    (Loss(1, 1, 2, 2, None, None, "r" * 65), "reason"),
    (Loss(-1, None, None, None, None, None, "power-loss"), "epoch"),
    (Loss(1, -3, None, None, None, None, "power-loss"), "epoch"),
    (Loss(1, None, None, 2**64, None, None, "power-loss"), "epoch"),
    (Loss(1, None, None, None, 1.5, None, "power-loss"), "timestamps"),  # type: ignore[arg-type]
    (Loss(1, True, None, None, None, None, "power-loss"), "epoch"),
])
def test_encoder_refuses_what_the_decoder_would(loss: Loss, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _encode([loss])


def test_encoder_refuses_too_many_losses() -> None:
    assert len(decode_batch(_encode([NO_SEQ] * MAX_LOSSES)).losses) == MAX_LOSSES
    with pytest.raises(ValueError, match=f"the {MAX_LOSSES} a batch may carry"):
        _encode([NO_SEQ] * (MAX_LOSSES + 1))


_BASE: dict[int, Any] = {0: 1, 1: "g", 2: 5, 3: 1}
_GOOD = [7, 90, 100, 11, 1000, 2000, "power-loss"]


def _with_loss(index: int, value: Any) -> dict[int, Any]:
    item = list(_GOOD)
    item[index] = value
    return {**_BASE, 11: [list(_GOOD), item]}


@pytest.mark.parametrize(("doc", "message"), [
    ({**_BASE, 11: {0: _GOOD}}, r"losses \(key 11\): expected an array"),
    ({**_BASE, 11: [_GOOD] * (MAX_LOSSES + 1)},
     rf"losses \(key 11\): expected at most {MAX_LOSSES} loss records; got {MAX_LOSSES + 1}"),
    ({**_BASE, 11: [_GOOD[:6]]}, r"losses\[0\]: expected \[epoch, first_seq"),
    ({**_BASE, 11: [[*_GOOD, None]]}, r"losses\[0\]: expected \[epoch, first_seq"),
    ({**_BASE, 11: ["power-loss"]}, r"losses\[0\]: expected \[epoch"),
    (_with_loss(0, None), r"losses\[1\]\.epoch: expected an unsigned integer; got None"),
    (_with_loss(0, -1), r"losses\[1\]\.epoch: expected an unsigned integer"),
    (_with_loss(1, "90"), r"losses\[1\]\.first_seq: expected an unsigned integer or null"),
    (_with_loss(1, True), r"losses\[1\]\.first_seq: expected an unsigned integer or null"),
    (_with_loss(2, -2), r"losses\[1\]\.last_seq: expected an unsigned integer or null"),
    (_with_loss(3, 1.0), r"losses\[1\]\.count: expected an unsigned integer or null"),
    (_with_loss(4, "t"), r"losses\[1\]\.first_ts: expected an integer or null"),
    (_with_loss(5, 2.5), r"losses\[1\]\.last_ts: expected an integer or null"),
    (_with_loss(1, None), r"losses\[1\]\.last_seq: expected null when first_seq is null; got 100"),
    (_with_loss(2, 89), r"losses\[1\]\.last_seq: expected null or at least first_seq 90; got 89"),
    (_with_loss(6, ""), r"losses\[1\]\.reason: expected a text of 1 to 64 characters"),
    (_with_loss(6, "r" * 65), r"losses\[1\]\.reason: expected a text of 1 to 64 characters"),
    (_with_loss(6, None), r"losses\[1\]\.reason: expected a text"),
    (_with_loss(6, b"power-loss"), r"losses\[1\]\.reason: expected a text"),
])
def test_decoder_refuses_bad_loss_records(doc: dict[int, Any], message: str) -> None:
    with pytest.raises(BatchFormatError, match=message):
        decode_batch(cbor2.dumps(doc))


def test_decoder_accepts_the_boundaries() -> None:
    doc = {**_BASE, 11: [[0, 5, 5, 0, -1, None, "r" * 64], [2**64 - 1, 5, None, None, None,
                                                             None, "ü"]]}
    got = decode_batch(cbor2.dumps(doc)).losses
    assert got == [Loss(0, 5, 5, 0, -1, None, "r" * 64),
                   Loss(2**64 - 1, 5, None, None, None, None, "ü")]


def test_losses_are_not_bound_by_the_batch_seq_range() -> None:
    doc = {**_BASE, 4: 10, 5: 12, 6: 1000,
           7: [[["p"], None, [0, 1, 1], [0, 5, 5], [1, 7, 1, 1]]],
           11: [[4, 1, 9, 9, None, None, "history-lost"], [5, 13, None, None, None, None,
                                                              "unclean-stop"]]}
    batch = decode_batch(cbor2.dumps(doc))
    assert [(x.epoch, x.first_seq, x.last_seq) for x in batch.losses] == [(4, 1, 9), (5, 13, None)]
    assert [s for s, _r in batch.readings] == [10, 11, 12]


_DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def test_the_documented_loss_example_is_what_the_encoder_writes() -> None:
    losses = [Loss(1733000000, 110, None, None, 1733000004000, None, "moved-aside"),
              Loss(1733000000, None, None, 3, 1733000005000, 1733000005000, "power-loss")]
    payload = encode_batch(gateway_id="cab-0042", epoch=1733086400, batch_seq=1, rows=[],
                           losses=losses)
    assert cbor2.loads(payload) == {
        0: 1, 1: "cab-0042", 2: 1733086400, 3: 1,
        11: [[1733000000, 110, None, None, 1733000004000, None, "moved-aside"],
             [1733000000, None, None, 3, 1733000005000, 1733000005000, "power-loss"]]}
    text = _DOC.read_text(encoding="utf-8")
    assert f"carries only losses ({len(payload)} bytes)" in text
    assert all(f"| `{reason}` |" in text for reason in LOSS_REASONS)
