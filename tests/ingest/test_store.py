"""The ingest store on SQLite and PostgreSQL: exactly once, replay refused across restarts,
keys honoured, losses and holes in the completeness report, same answers on both."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffer.types import Gap, Loss, Row
from gateway.command import Result as CommandResult
from gateway.command import encode_result
from gateway.cose import sign1
from ingest._db import Database
from ingest.query import completeness, latest, readings, readings_range
from ingest.schema import SCHEMA_VERSION, schema_version
from ingest.store import IngestStore
from tests.ingest.helpers import TS, FakeGateway

OpenDb = Callable[[str], Database]


def _store(open_db: OpenDb, url: str, *gateways: FakeGateway) -> IngestStore:
    store = IngestStore(open_db(url))
    for gw in gateways:
        store.add_key(gw.key.public_key(), gw.id)
    return store


def _count(store: IngestStore, sql: str = "SELECT COUNT(*) FROM readings") -> int:
    with store.db.transaction() as tx:
        row = tx.one(sql)
    assert row is not None
    return int(row[0])


def test_each_reading_once_and_a_replay_refused_after_a_restart(
        db_url: str, open_db: OpenDb) -> None:
    gw = FakeGateway()
    store = _store(open_db, db_url, gw)
    first, second = gw.batch(gw.rows(10)), gw.batch(gw.rows(10))
    out = store.ingest([gw.message(first), gw.message(second), gw.message(first)])
    assert [(o.status, o.stored) for o in out] == [("ok", 10), ("ok", 10), ("replay", 0)]
    # The gateway lost an ack and resends the same readings under a new batch_seq.
    again = gw.batch([(i, f"meter-1/p{i % 3}", "V", TS + i * 1000, 230.0 + i / 100, 0)
                      for i in range(11, 21)])
    assert [o.status for o in store.ingest([gw.message(again)])] == ["duplicate"]
    store.db.close()
    restarted = IngestStore(open_db(db_url))  # a new worker: state from the database
    assert [o.status for o in restarted.ingest([gw.message(second)])] == ["replay"]
    assert _count(restarted) == 20
    report = completeness(restarted.db, gw.id)["epochs"]
    assert [(e["received"], e["batches"], e["holes"], e["refused"]) for e in report] == [
        (20, 3, [], {"replay": 2})]


def test_unknown_and_revoked_keys_and_wrong_topics_are_refused(
        db_url: str, open_db: OpenDb) -> None:
    gw, stranger = FakeGateway(), FakeGateway("cab-1")  # same id, a key nobody registered
    store = _store(open_db, db_url, gw)
    out = store.ingest([gw.message(stranger.batch(stranger.rows(3)))])
    assert [o.status for o in out] == ["unknown-key"]
    other = FakeGateway("cab-2")
    store.add_key(other.key.public_key(), "cab-2")
    wrong = store.ingest([other.message(other.batch(other.rows(2)), "streetgate/cab-1/batch")])
    assert [o.status for o in wrong] == ["wrong-topic"]
    # A key bound to cab-2 may not sign for cab-1, whatever the topic says.
    impostor = FakeGateway("cab-1", key=other.key)
    assert [o.status for o in store.ingest([impostor.message(
        impostor.batch(impostor.rows(1)))])] == ["unknown-key"]
    assert [o.status for o in store.ingest([gw.message(gw.batch(gw.rows(4)))])] == ["ok"]
    assert store.revoke_key(gw.kid.hex())
    refused = store.ingest([gw.message(gw.batch(gw.rows(4)))])
    assert [(o.status, o.stored) for o in refused] == [("unknown-key", 0)]
    assert _count(store) == 4
    assert _count(store, "SELECT COUNT(*) FROM rejections") == 4


def test_an_epoch_change_with_a_loss_record_shows_in_the_report(
        db_url: str, open_db: OpenDb) -> None:
    gw = FakeGateway()
    store = _store(open_db, db_url, gw)
    old = gw.epoch
    store.ingest([gw.message(gw.batch(gw.rows(5)))])
    gw.rows(3)  # seqs 6-8 never sent: the card died with them
    lost = Loss(old, 6, None, None, TS + 6000, None, "moved-aside")
    gw.epoch, gw.seq = old + 100, 0
    store.ingest([gw.message(gw.batch(gw.rows(4), losses=[lost]))])
    report = completeness(store.db, gw.id)
    by_epoch = {e["epoch"]: e for e in report["epochs"]}
    assert by_epoch[str(old)]["losses"] == [{"first_seq": 6, "last_seq": None, "count": None,
                                             "first_ts": TS + 6000, "last_ts": None,
                                             "reason": "moved-aside"}]
    assert by_epoch[str(old)]["holes"] == []
    assert by_epoch[str(old + 100)]["received"] == 4


def test_gaps_holes_clock_spans_and_command_results_are_stored(
        db_url: str, open_db: OpenDb) -> None:
    gw = FakeGateway()
    store = _store(open_db, db_url, gw)
    rows = gw.rows(6)
    result = CommandResult(gateway=gw.id, id="cmd-1", status="done", ts=TS, ref=b"r" * 16,
                           point="lamps/l1", value=70)
    signed = sign1(encode_result(result), gw.key, gw.kid)
    payload = gw.batch(rows[:2] + rows[4:], gaps=[Gap(3, 3, 1, TS, TS, ("meter-1/p0",))],
                       extra={9: [[1, 2, None]], 12: [signed]})
    store.ingest([gw.message(payload)])
    store.ingest([gw.message(gw.batch([], extra={9: [[1, 2, -500]]}))])
    epoch = completeness(store.db, gw.id)["epochs"][0]
    assert (epoch["received"], epoch["gaps"], epoch["dropped"], epoch["holes"]) == (4, 1, 1,
                                                                                   [[4, 4]])
    assert epoch["clock_spans"] == {"known": 1}
    with store.db.transaction() as tx:
        assert tx.all("SELECT command_id, status, value FROM command_results") == [
            ("cmd-1", "done", "70")]
    # A result signed by another key is not stored.
    forged = sign1(encode_result(result), Ed25519PrivateKey.generate(), gw.kid)
    store.ingest([gw.message(gw.batch([], extra={12: [forged]}))])
    assert _count(store, "SELECT COUNT(*) FROM command_results") == 1


def test_native_values_come_back_as_they_were(
        db_url: str, open_db: OpenDb) -> None:
    gw = FakeGateway()
    store = _store(open_db, db_url, gw)
    values: list[object] = [True, 2**63 + 1, -7, 1.5, math.inf, "open", b"\x00\xff", None]
    rows: list[Row] = [(i + 1, f"p{i}", None, TS + i, v, 0 if v is not None else 1)  # type: ignore[misc]
                       for i, v in enumerate(values)]
    store.ingest([gw.message(gw.batch(rows))])
    got = {i: readings_range(store.db, gw.id, f"p{i}", 0, 2**62)[0][1].value
           for i in range(len(values))}
    assert got == dict(enumerate(values))
    nan = gw.batch([(20, "nan", None, TS, math.nan, 0)])
    store.ingest([gw.message(nan)])
    (reading,) = readings_range(store.db, gw.id, "nan", 0, 2**62)
    assert math.isnan(float(reading[1].value))  # type: ignore[arg-type]


def _scenario(open_db: OpenDb, url: str, gw: FakeGateway, loss_gw: FakeGateway) -> IngestStore:
    store = _store(open_db, url, gw, loss_gw)
    batches = [gw.batch(gw.rows(7)) for _ in range(6)]
    store.ingest([gw.message(b) for b in batches[:3]])
    store.ingest([gw.message(b) for b in reversed(batches[3:])])  # out of order
    store.ingest([gw.message(batches[1])])  # a replay
    old = loss_gw.epoch
    store.ingest([loss_gw.message(loss_gw.batch(loss_gw.rows(5)))])
    loss_gw.epoch, loss_gw.seq = old + 1, 0
    lost = Loss(old, 6, 9, 4, TS, TS + 9000, "power-loss")
    store.ingest([loss_gw.message(loss_gw.batch(loss_gw.rows(2), losses=[lost]))])
    return store


def test_sqlite_and_postgresql_give_the_same_answers(
        tmp_path: Path, postgres: str, open_db: OpenDb) -> None:
    key, loss_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    answers = []
    for url in (f"sqlite:///{tmp_path / 'a.db'}", postgres):
        store = _scenario(open_db, url, FakeGateway(key=key), FakeGateway("cab-9", key=loss_key))
        db = store.db
        answers.append((latest(db), latest(db, "cab-9"),
                        readings(db, "cab-1", "meter-1/p1", TS, TS + 30_000),
                        completeness(db, "cab-1"), completeness(db, "cab-9")))
    assert answers[0] == answers[1]
    assert len(answers[0][2]) == 10
    assert answers[0][4]["epochs"][0]["losses"][0]["reason"] == "power-loss"


def test_the_schema_is_versioned_and_opening_twice_migrates_once(
        db_url: str, open_db: OpenDb) -> None:
    open_db(db_url).close()
    db = open_db(db_url)
    with db.transaction() as tx:
        assert schema_version(tx) == SCHEMA_VERSION
        assert tx.all("SELECT COUNT(*) FROM schema_version") == [(SCHEMA_VERSION,)]
