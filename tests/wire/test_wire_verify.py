"""The verifier: each reading exactly once, replays refused, gaps, losses and holes reported."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.types import Gap, Loss, Row
from gateway.batch import encode_batch
from gateway.cose import kid_for, sign1
from ingest.verify import IntervalSet, Verifier
from tests.wire.workload import GATEWAY_ID, demo_rows

KEY = Ed25519PrivateKey.generate()
KID = kid_for(KEY.public_key())


def message(rows: list[Row], batch_seq: int, *, epoch: int = 1, gaps: tuple[Gap, ...] = (),
            losses: tuple[Loss, ...] = (), gateway_id: str = GATEWAY_ID,
            key: Ed25519PrivateKey = KEY) -> bytes:
    payload = encode_batch(gateway_id=gateway_id, epoch=epoch, batch_seq=batch_seq, rows=rows,
                           gaps=gaps, losses=losses)
    return sign1(payload, key, kid_for(key.public_key()))


@pytest.fixture
def verifier() -> Verifier:
    return Verifier({KID: KEY.public_key()})


ROWS = demo_rows(points=8, readings=80)  # seqs 1..80


def seqs(result: Any) -> list[int]:
    return [s for s, _r in result.readings]


def test_a_batch_is_delivered_with_its_identity(verifier: Verifier) -> None:
    res = verifier.feed(message(ROWS[:40], 1), received_ms=ROWS[39][3] + 250)
    assert res.status == "ok"
    assert res.ok
    assert not res.rejected
    assert (res.gateway_id, res.epoch, res.batch_seq, res.kid) == (GATEWAY_ID, 1, 1, KID)
    assert seqs(res) == list(range(1, 41))
    assert res.readings[0][1].point == ROWS[0][1]
    assert (res.duplicates, res.missing, res.out_of_order, res.lag_ms) == (0, [], False, 250)


def test_the_same_message_again_is_a_replay(verifier: Verifier) -> None:
    msg = message(ROWS[:40], 1)
    assert verifier.feed(msg).ok
    res = verifier.feed(msg)
    assert (res.status, res.readings, res.duplicates) == ("replay", [], 40)
    assert res.rejected
    assert res.authentic
    assert verifier.stats["rejected"] == {"replay": 1}
    assert verifier.stats["readings"] == 40


def test_resend_with_partial_overlap_passes_only_new_readings(verifier: Verifier) -> None:
    assert verifier.feed(message(ROWS[:40], 1)).ok
    res = verifier.feed(message(ROWS[30:60], 2))
    assert res.status == "ok"
    assert seqs(res) == list(range(41, 61))
    assert res.duplicates == 10
    assert verifier.stats["duplicates"] == 10


def test_late_batch_with_new_readings_is_accepted_out_of_order(verifier: Verifier) -> None:
    assert verifier.feed(message(ROWS[40:80], 5)).ok
    res = verifier.feed(message(ROWS[:40], 4))
    assert (res.status, res.out_of_order) == ("ok", True)
    assert seqs(res) == list(range(1, 41))
    assert res.missing == []


def test_old_batch_seq_with_nothing_new_is_a_replay(verifier: Verifier) -> None:
    assert verifier.feed(message(ROWS[:40], 7)).ok
    res = verifier.feed(message(ROWS[10:20], 3))  # differently encoded, same readings
    assert (res.status, res.readings, res.duplicates) == ("replay", [], 10)


def test_new_batch_seq_with_nothing_new_is_a_benign_duplicate(verifier: Verifier) -> None:
    assert verifier.feed(message(ROWS[:40], 1)).ok
    res = verifier.feed(message(ROWS[:40], 2))  # resent after a lost PUBACK
    assert (res.status, res.readings, res.duplicates, res.rejected) == ("duplicate", [], 40,
                                                                         False)
    assert verifier.stats["duplicate_batches"] == 1
    assert verifier.stats["rejected"] == {}
    assert verifier.feed(message(ROWS[:40], 2)).status == "replay"


def test_missing_ranges_and_gaps(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1))
    res = verifier.feed(message(ROWS[20:30], 2))
    assert res.missing == [(11, 20)]
    gap = Gap(11, 15, 5, ROWS[10][3], ROWS[14][3], (ROWS[10][1],))
    res = verifier.feed(message(ROWS[30:40], 3, gaps=(gap,)))
    assert res.gaps == [gap]
    assert res.missing == [(16, 20)]
    res = verifier.feed(message(ROWS[30:45], 4, gaps=(gap,)))  # the gap again: not new
    assert res.gaps == []
    assert verifier.stats["gaps"] == 1
    assert verifier.stats["dropped_by_gap"] == 5
    res = verifier.feed(message(ROWS[15:20], 5))
    assert res.missing == []
    assert verifier.missing(GATEWAY_ID, 1) == []


def test_origin_makes_readings_before_the_first_received_missing() -> None:
    verifier = Verifier({KID: KEY.public_key()}, origin=1)
    assert verifier.feed(message(ROWS[10:20], 1)).missing == [(1, 10)]


def test_gap_only_batch_is_accepted(verifier: Verifier) -> None:
    res = verifier.feed(message([], 1, gaps=(Gap(1, 9, 9, 0, 1),)))
    assert (res.status, res.readings, len(res.gaps)) == ("ok", [], 1)


def test_a_new_epoch_starts_fresh(verifier: Verifier) -> None:
    assert verifier.feed(message(ROWS[:40], 9, epoch=1)).ok
    res = verifier.feed(message(ROWS[:40], 1, epoch=2))
    assert (res.status, res.epoch, len(res.readings)) == ("ok", 2, 40)
    assert verifier.feed(message(ROWS[:40], 9, epoch=1)).status == "replay"


def test_every_altered_byte_is_rejected(verifier: Verifier) -> None:
    msg = message(ROWS[:40], 1)
    statuses = set()
    for i in range(len(msg)):
        damaged = bytearray(msg)
        damaged[i] ^= 0x04
        res = verifier.feed(bytes(damaged))
        assert res.rejected, (i, res.status)
        assert not res.authentic
        assert res.readings == []
        statuses.add(res.status)
    assert statuses <= {"malformed", "bad-signature", "unknown-key"}
    assert "bad-signature" in statuses
    assert verifier.feed(msg).ok  # nothing above disturbed the state


def test_signed_garbage_is_malformed(verifier: Verifier) -> None:
    res = verifier.feed(sign1(b"\xa1\x00\x02", KEY, KID))
    assert res.status == "malformed"
    assert res.error is not None
    assert "format version 2" in res.error


def test_unknown_key_and_gateway_binding() -> None:
    other = Ed25519PrivateKey.generate()
    verifier = Verifier({KID: KEY.public_key(), kid_for(other.public_key()): other.public_key()},
                        gateways={kid_for(other.public_key()): "cab-other"})
    stranger = Ed25519PrivateKey.generate()
    assert verifier.feed(message(ROWS[:5], 1, key=stranger)).status == "unknown-key"
    res = verifier.feed(message(ROWS[:5], 1, key=other))  # claims GATEWAY_ID with cab-other's key
    assert res.status == "unknown-key"
    assert res.error is not None
    assert "cab-other" in res.error
    assert verifier.feed(message(ROWS[:5], 1, key=other, gateway_id="cab-other")).ok
    assert verifier.stats["rejected"] == {"unknown-key": 2}


def test_state_survives_a_restart_through_json(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1))
    verifier.feed(message(ROWS[20:30], 2, gaps=(Gap(11, 12, 2, 0, 0),)))
    saved = json.loads(json.dumps(verifier.state()))
    again = Verifier({KID: KEY.public_key()})
    again.restore(saved)
    assert again.feed(message(ROWS[:10], 1)).status == "replay"
    res = again.feed(message(ROWS[10:20], 3))
    assert seqs(res) == list(range(11, 21))
    assert again.stats["readings"] == 30


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=12))
def test_interval_set_matches_a_plain_set(ranges: list[tuple[int, int]]) -> None:
    model: set[int] = set()
    intervals = IntervalSet()
    for lo, width in ranges:
        intervals.add(lo, lo + width)
        model.update(range(lo, lo + width + 1))
    assert len(intervals) == len(model)
    assert all((v in intervals) == (v in model) for v in range(-1, 72))
    spans = intervals.ranges()
    assert all(b + 1 < c for (_a, b), (c, _d) in itertools.pairwise(spans))
    holes = intervals.holes(IntervalSet(), 0, 70)
    assert {v for a, b in holes for v in range(a, b + 1)} == set(range(71)) - model


# ---------------------------------------------------------------- loss records (key 11)


def lost(epoch: int, first: int | None, last: int | None, count: int | None = None,
         reason: str = "power-loss") -> Loss:
    return Loss(epoch, first, last, count, 1_733_000_000_000, 1_733_000_001_000, reason)


def test_a_loss_with_an_exact_range_fills_the_hole(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1))
    assert verifier.feed(message(ROWS[20:30], 2)).missing == [(11, 20)]
    loss = lost(1, 12, 18, 7)
    res = verifier.feed(message(ROWS[30:35], 3, losses=(loss,)))
    assert (res.status, res.losses) == ("ok", [loss])
    assert res.missing == [(11, 11), (19, 20)]
    assert verifier.stats["losses"] == 1
    assert verifier.stats["lost_reported"] == 7
    assert verifier.stats["dropped_by_gap"] == 0


def test_an_open_ended_loss_covers_seqs_above_the_highest_seen(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1))
    verifier.feed(message(ROWS[20:30], 2))
    res = verifier.feed(message([], 3, losses=(lost(1, 15, None),)))
    assert res.missing == [(11, 14)]  # 15 on: accounted for, however high
    res = verifier.feed(message(ROWS[50:60], 4))  # later seqs still arrive and are delivered
    assert seqs(res) == list(range(51, 61))
    assert res.missing == [(11, 14)]
    verifier.feed(message(ROWS[10:14], 5))
    assert verifier.missing(GATEWAY_ID, 1) == []


def test_an_open_ended_loss_keeps_the_holes_below_it(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1))
    res = verifier.feed(message([], 2, losses=(lost(1, 41, None),)))
    assert res.missing == [(11, 40)]  # 11-40 were still in the gateway's buffer: in flight


def test_a_loss_of_an_older_epoch_fills_that_epochs_holes(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1, epoch=1))
    verifier.feed(message(ROWS[20:30], 2, epoch=1))
    assert verifier.missing(GATEWAY_ID, 1) == [(11, 20)]
    # The database was moved aside: the new epoch's first batch reports what the old one lost.
    res = verifier.feed(message(ROWS[:5], 1, epoch=2, losses=(lost(1, 11, None, None,
                                                                    "moved-aside"),)))
    assert (res.status, res.epoch, len(res.readings)) == ("ok", 2, 5)
    assert [x.epoch for x in res.losses] == [1]
    assert res.missing == []
    assert verifier.missing(GATEWAY_ID, 1) == []
    assert verifier.feed(message(ROWS[20:30], 2, epoch=1)).status == "replay"  # old state kept


def test_a_loss_for_an_epoch_not_seen_yet_starts_its_state() -> None:
    verifier = Verifier({KID: KEY.public_key()}, origin=1)
    res = verifier.feed(message(ROWS[:5], 1, epoch=2, losses=(lost(1, 30, 40, 11),)))
    assert res.losses == [lost(1, 30, 40, 11)]
    assert verifier.missing(GATEWAY_ID, 1) == [(1, 29)]  # origin 1: 1-29 not received yet
    assert seqs(verifier.feed(message(ROWS[:29], 1, epoch=1))) == list(range(1, 30))
    assert verifier.missing(GATEWAY_ID, 1) == []


def test_a_resent_loss_is_reported_and_counted_once(verifier: Verifier) -> None:
    loss = lost(1, 5, 9, 5)
    first = verifier.feed(message(ROWS[10:20], 1, losses=(loss, loss)))
    assert first.losses == [loss]  # twice in one batch is still one record
    res = verifier.feed(message(ROWS[20:30], 2, losses=(loss,)))
    assert (res.status, res.losses, seqs(res)) == ("ok", [], list(range(21, 31)))
    assert (verifier.stats["losses"], verifier.stats["lost_reported"]) == (1, 5)
    other = lost(1, 5, 9, 5, reason="unclean-stop")  # same range, another record
    assert verifier.feed(message([], 3, losses=(other,))).losses == [other]
    assert (verifier.stats["losses"], verifier.stats["lost_reported"]) == (2, 10)


def test_a_loss_only_batch_is_ok_and_its_resend_a_duplicate(verifier: Verifier) -> None:
    losses = (lost(1, None, None, 3, "exit-unwritten"), lost(1, None, None, None, "unclean-stop"))
    msg = message([], 1, losses=losses)
    res = verifier.feed(msg)
    assert (res.status, res.readings, res.losses, res.missing) == ("ok", [], list(losses), [])
    assert (verifier.stats["losses"], verifier.stats["lost_reported"]) == (2, 3)
    resent = verifier.feed(message([], 2, losses=losses))  # acknowledgement lost, sent again
    assert (resent.status, resent.losses, resent.rejected) == ("duplicate", [], False)
    assert verifier.feed(msg).status == "replay"
    assert verifier.stats["losses"] == 2


def test_loss_coverage_survives_a_restart_through_json(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1))
    verifier.feed(message(ROWS[20:30], 2, losses=(lost(1, 11, 15, 5), lost(1, 40, None))))
    assert verifier.missing(GATEWAY_ID, 1) == [(16, 20), (31, 39)]
    saved = json.loads(json.dumps(verifier.state()))
    again = Verifier({KID: KEY.public_key()})
    again.restore(saved)
    assert again.missing(GATEWAY_ID, 1) == [(16, 20), (31, 39)]
    assert (again.stats["losses"], again.stats["lost_reported"]) == (2, 5)
    res = again.feed(message(ROWS[30:35] + ROWS[60:70], 3, losses=(lost(1, 11, 15, 5),)))
    assert res.losses == []  # known before the restart
    assert res.missing == [(16, 20), (36, 39)]  # nothing from 40 on, though 61-70 came
    assert again.stats["losses"] == 2


def test_state_saved_before_loss_records_still_restores(verifier: Verifier) -> None:
    verifier.feed(message(ROWS[:10], 1))
    verifier.feed(message(ROWS[20:30], 2))
    old = json.loads(json.dumps(verifier.state()))
    for stream in old["streams"]:
        del stream["losses"]
    del old["stats"]["losses"], old["stats"]["lost_reported"]
    again = Verifier({KID: KEY.public_key()})
    again.restore(old)
    assert again.missing(GATEWAY_ID, 1) == [(11, 20)]
    assert (again.stats["losses"], again.stats["lost_reported"]) == (0, 0)
    res = again.feed(message([], 3, losses=(lost(1, 11, 20, 10),)))
    assert (res.status, res.missing, again.stats["lost_reported"]) == ("ok", [], 10)


def test_a_resent_gap_only_batch_is_a_duplicate(verifier: Verifier) -> None:
    gap = Gap(1, 9, 9, 0, 1)
    assert verifier.feed(message([], 1, gaps=(gap,))).gaps == [gap]
    res = verifier.feed(message([], 2, gaps=(gap,)))
    assert (res.status, res.gaps) == ("duplicate", [])
    assert verifier.stats["gaps"] == 1
