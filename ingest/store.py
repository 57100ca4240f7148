"""Verified batches into the database, each reading exactly once, the verifier's state beside.

:meth:`IngestStore.ingest` takes a group of received messages and handles them in one
transaction: it checks each signature with the keys in ``gateway_keys``, locks the streams
the group touches (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite),
loads their state into an :class:`ingest.verify.Verifier`, lets it decide what is new, and
writes that and the new state. The caller acknowledges the messages to the broker only after
this returns, so a worker that dies mid-group leaves nothing half-written and the broker
redelivers. Every insert is ``ON CONFLICT DO NOTHING`` besides: writing a batch twice is a no-op.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.command import K_RESULTS, CommandFormatError, decode_result
from gateway.cose import VerifyError, open1
from ingest._db import RetryableError
from ingest._values import FLOAT as _FLOAT
from ingest._values import VALUE_COLUMNS, encode_value
from ingest.verify import Result, Verifier

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from buffer.types import Loss
    from gateway.batch import Batch
    from ingest._db import Database, Tx

__all__ = ["Incoming", "IngestStore", "Outcome"]

_log = logging.getLogger("streetgate.ingest")
_K_CLOCK = 9  # batch key 9: clock spans (docs/wire-format.md)
_READING_COLUMNS = ("gateway_id", "epoch", "seq", "point", "unit", "ts", *VALUE_COLUMNS)
#: Their PostgreSQL types, for binary COPY (schema.py).
_READING_TYPES = ("text", "int8", "int8", "text", "text", "int8", "int2", "int2", "int8",
                  "float8", "text", "bytea")
_RETRIES = 8
_isfinite = math.isfinite


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received: its topic, its bytes, when it arrived."""

    topic: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: ``status`` as :class:`ingest.verify.Result` says (or
    ``wrong-topic``, or ``result`` for a command result on its own topic)."""

    status: str
    gateway_id: str = ""
    epoch: int | None = None
    batch_seq: int | None = None
    stored: int = 0
    error: str | None = None


class _Keys(Mapping[bytes, Ed25519PublicKey]):
    """The key registry as the verifier asks it: one query per kid, per transaction."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self._found: dict[bytes, tuple[Ed25519PublicKey, str | None] | None] = {}
        self.gateways = _Bindings(self)

    def prefetch(self, messages: Sequence[Incoming]) -> None:
        """Look up every kid the group's batches name in one query (else one per kid)."""
        kids = {k for m in messages if not m.topic.endswith("/cmd/result")
                for k in [_peek_kid(m.payload)] if k is not None and k not in self._found}
        ordered = sorted(kids)
        for i in range(0, len(ordered), 500):
            chunk = ordered[i:i + 500]
            rows = self._tx.all("SELECT kid, public_key, gateway_id FROM gateway_keys WHERE "  # noqa: S608 - placeholders only
                                f"revoked_ms IS NULL AND kid IN ({', '.join('?' * len(chunk))})",
                                [k.hex() for k in chunk])
            found = {r[0]: r for r in rows}
            for kid in chunk:
                row = found.get(kid.hex())
                self._found[kid] = None if row is None else (_public_key(bytes(row[1])), row[2])

    def entry(self, kid: bytes) -> tuple[Ed25519PublicKey, str | None] | None:
        if kid not in self._found:
            row = self._tx.one("SELECT public_key, gateway_id FROM gateway_keys "
                               "WHERE kid = ? AND revoked_ms IS NULL", (kid.hex(),))
            self._found[kid] = None if row is None else (_public_key(bytes(row[0])), row[1])
        return self._found[kid]

    def __getitem__(self, kid: bytes) -> Ed25519PublicKey:
        found = self.entry(kid)
        if found is None:
            raise KeyError(kid)
        return found[0]

    def __iter__(self) -> Iterator[bytes]:
        return iter([k for k, v in self._found.items() if v is not None])

    def __len__(self) -> int:
        return sum(v is not None for v in self._found.values())


@functools.lru_cache(maxsize=65536)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def _peek_kid(message: bytes) -> bytes | None:
    """The kid in a COSE_Sign1's unprotected header, if it looks like one (open1 checks)."""
    try:
        item = cbor2.loads(message)
        kid = item.value[1].get(4)
    except Exception:  # noqa: BLE001 - anything malformed: open1 says what is wrong
        return None
    return kid if isinstance(kid, bytes) else None


class _Bindings(Mapping[bytes, str]):
    """kid -> the gateway it may sign for, from the same lookups as :class:`_Keys`."""

    def __init__(self, keys: _Keys) -> None:
        self._keys = keys

    def __getitem__(self, kid: bytes) -> str:
        found = self._keys.entry(kid)
        if found is None or found[1] is None:
            raise KeyError(kid)
        return found[1]

    def __iter__(self) -> Iterator[bytes]:
        return iter(k for k in self._keys if self._keys.entry(k)[1] is not None)  # type: ignore[index]

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class _Writes:
    """Rows one transaction writes, gathered so each table gets one bulk statement."""

    readings: list[tuple[Any, ...]]
    latest: dict[tuple[str, str], tuple[Any, ...]]
    gaps: list[tuple[Any, ...]]
    losses: list[tuple[Any, ...]]
    clock: list[tuple[Any, ...]]
    results: list[tuple[Any, ...]]
    batches: list[tuple[Any, ...]]
    rejections: list[tuple[Any, ...]]
    counts: dict[tuple[str, int], list[int]]  # received, duplicates, batches


def _topic_gateway(topic: str) -> str | None:
    """``<prefix>/<gateway-id>/batch`` -> gateway-id (the broker's ACL vouches for it)."""
    parts = topic.split("/")
    return parts[-2] if len(parts) >= 3 else None


class IngestStore:
    """Verified batches into one database (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- key registry -------------------------------------------------------------------------
    def add_key(self, public_key: Ed25519PublicKey, gateway_id: str | None) -> str:
        """Trust ``public_key`` (for ``gateway_id`` alone, when given); returns its kid.

        A key revoked before stays revoked."""
        return self.add_keys([(public_key, gateway_id)])[0]

    def add_keys(self, keys: Sequence[tuple[Ed25519PublicKey, str | None]]) -> list[str]:
        """:meth:`add_key` for many keys in one transaction (a fleet's registry at once)."""
        from gateway.cose import kid_for  # noqa: PLC0415

        now = _now_ms()
        rows = [(kid_for(pub).hex(), gw, pub.public_bytes(Encoding.Raw, PublicFormat.Raw), now)
                for pub, gw in keys]
        with self.db.transaction() as tx:
            tx.executemany("INSERT INTO gateway_keys (kid, gateway_id, public_key, added_ms) "
                           "VALUES (?, ?, ?, ?) ON CONFLICT (kid) DO NOTHING", rows)
        return [r[0] for r in rows]

    def import_key_directory(self, directory: Path) -> int:
        """Every key of the registrar's key directory (``<kid>.pub.pem``, registry.json)."""
        from provisioning import load_key_directory  # noqa: PLC0415

        found = load_key_directory(directory)
        for known in found.values():
            self.add_key(known.public_key, known.gateway_id)
        return len(found)

    def revoke_key(self, kid: str) -> bool:
        """Refuse every batch signed by ``kid`` from now on; False when the kid is unknown."""
        with self.db.transaction() as tx:
            row = tx.one("SELECT kid FROM gateway_keys WHERE kid = ?", (kid,))
            tx.execute("UPDATE gateway_keys SET revoked_ms = ? WHERE kid = ? AND "
                       "revoked_ms IS NULL", (_now_ms(), kid))
        return row is not None

    # -- ingest -------------------------------------------------------------------------------
    def ingest(self, messages: Sequence[Incoming]) -> list[Outcome]:
        """Verify and store ``messages`` in one transaction; retried on conflicts."""
        for attempt in range(_RETRIES):
            try:
                with self.db.transaction() as tx:
                    return self._ingest(tx, messages)
            except RetryableError as exc:
                if attempt == _RETRIES - 1:
                    raise
                _log.debug("ingest: retrying a group of %d: %s", len(messages), exc)
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
        raise AssertionError("unreachable")

    def _ingest(self, tx: Tx, messages: Sequence[Incoming]) -> list[Outcome]:
        keys = _Keys(tx)
        keys.prefetch(messages)
        verifier = Verifier({}, origin=1)
        verifier.keys, verifier.gateways = keys, keys.gateways
        w = _Writes([], {}, [], [], [], [], [], [], {})
        outcomes: list[Outcome | None] = []
        opened: list[tuple[int, Incoming, bytes, Batch]] = []
        for i, msg in enumerate(messages):
            if msg.topic.endswith("/cmd/result"):
                outcomes.append(self._result_message(keys, msg, w))
                continue
            got = verifier.open(msg.payload, received_ms=msg.received_ms)
            outcomes.append(None)
            if isinstance(got, Result):
                outcomes[i] = self._reject(w, msg, got.status, got.error, kid=got.kid)
            elif _topic_gateway(msg.topic) != got[1].gateway_id:
                outcomes[i] = self._reject(
                    w, msg, "wrong-topic", f"batch of {got[1].gateway_id!r} on {msg.topic!r}",
                    kid=got[0], batch=got[1])
            else:
                opened.append((i, msg, *got))
        streams = sorted({k for *_x, b in opened for k in Verifier.streams_of(b)})
        self._load_streams(tx, verifier, streams)
        for i, msg, kid, batch in opened:
            outcomes[i] = self._accept(verifier, w, msg, kid, batch, keys)
        self._write(tx, verifier, w, streams)
        return [o for o in outcomes if o is not None]

    def _load_streams(self, tx: Tx, verifier: Verifier, streams: list[tuple[str, int]]) -> None:
        """Create missing stream rows, lock them in a fixed order, load their state."""
        tx.executemany("INSERT INTO streams (gateway_id, epoch) VALUES (?, ?) "
                       "ON CONFLICT DO NOTHING", streams)
        # Sorted and locked in that order: two workers always lock in the same order.
        lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
        states: dict[tuple[str, int], Any] = {}
        for i in range(0, len(streams), 500):
            chunk = streams[i:i + 500]
            pairs = ", ".join(["(?, ?)"] * len(chunk))
            for gw, ep, state in tx.all(
                    f"SELECT gateway_id, epoch, state FROM streams WHERE (gateway_id, epoch) IN "  # noqa: S608 - placeholders only
                    f"({pairs}) ORDER BY gateway_id, epoch{lock}",
                    [x for pair in chunk for x in pair]):
                states[gw, int(ep)] = state
        for gw, ep in streams:
            state = states.get((gw, ep))
            verifier.load_stream(json.loads(state) if state else None, gw, ep)

    def _reject(self, w: _Writes, msg: Incoming, status: str, error: str | None, *,
                kid: bytes | None = None, batch: Batch | None = None,
                res: Result | None = None) -> Outcome:
        gw = batch.gateway_id if batch else (res.gateway_id if res else None)
        epoch = batch.epoch if batch else (res.epoch if res else None)
        seq = batch.batch_seq if batch else (res.batch_seq if res else None)
        w.rejections.append((msg.received_ms, msg.topic, status, error, gw,
                             kid.hex() if kid else None, epoch, seq))
        _log.debug("ingest: %s refused: %s (%s)", msg.topic, status, error)
        return Outcome(status, gw or "", epoch, seq, 0, error)

    def _accept(self, verifier: Verifier, w: _Writes, msg: Incoming, kid: bytes, batch: Batch,  # noqa: PLR0917 - private
                keys: _Keys) -> Outcome:
        res = verifier.accept(kid, batch, received_ms=msg.received_ms)
        if res.rejected:
            return self._reject(w, msg, res.status, res.error, kid=kid, res=res)
        gw, ep = batch.gateway_id, batch.epoch
        rows = w.readings
        latest = w.latest
        last_of: dict[str, tuple[Any, ...]] = {}
        for seq, (point, ts, value, quality, unit) in res.readings:
            # A good finite float is by far the most common value: its columns inline.
            enc = ((_FLOAT, None, value, None, None) if type(value) is float
                   and _isfinite(value) else encode_value(value))
            row = (gw, ep, seq, point, unit, ts, int(quality), *enc)
            rows.append(row)
            best = last_of.get(point)
            if best is None or ts >= best[5]:  # seqs ascend: a tie goes to the later seq
                last_of[point] = row
        for point, row in last_of.items():
            best = latest.get((gw, point))
            if best is None or (row[5], ep, row[2]) > (best[5], best[1], best[2]):
                latest[gw, point] = row
        w.gaps += [(gw, ep, g.first_seq, g.last_seq, g.count, g.first_ts, g.last_ts,
                    json.dumps({"points": list(g.points), "truncated": g.points_truncated}))
                   for g in res.gaps]
        w.losses += [_loss_row(gw, loss) for loss in res.losses]
        w.clock += _clock_rows(gw, ep, res.extra.get(_K_CLOCK))
        for message in res.extra.get(K_RESULTS, ()) if isinstance(
                res.extra.get(K_RESULTS), list) else ():
            result = _result_row(gw, message, keys)
            if result is not None:
                w.results.append(result)
        newest = max((r.ts for _s, r in res.readings), default=None)
        w.batches.append((gw, ep, batch.batch_seq, res.status, kid.hex(), batch.first_seq,
                          batch.last_seq, len(res.readings), res.duplicates, newest,
                          msg.received_ms))
        c = w.counts.setdefault((gw, ep), [0, 0, 0])
        c[0] += len(res.readings)
        c[1] += res.duplicates
        c[2] += 1
        return Outcome(res.status, gw, ep, batch.batch_seq, len(res.readings))

    def _result_message(self, keys: _Keys, msg: Incoming, w: _Writes) -> Outcome:
        gw = _topic_gateway(msg.topic.removesuffix("/result")) or ""
        row = _result_row(gw, msg.payload, keys)
        if row is None:
            return self._reject(w, msg, "bad-result", "not a command result signed by "
                                f"{gw!r}'s key")
        w.results.append(row)
        return Outcome("result", gw)

    def _write(self, tx: Tx, verifier: Verifier, w: _Writes,
               streams: list[tuple[str, int]]) -> None:
        self._write_readings(tx, w)
        tx.executemany("INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       w.gaps)
        tx.executemany("INSERT INTO losses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT DO NOTHING", w.losses)
        tx.executemany("INSERT INTO clock_spans VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT "
                       "(gateway_id, epoch, first_seq) DO UPDATE SET last_seq = "
                       "excluded.last_seq, offset_ms = excluded.offset_ms, state = "
                       "excluded.state WHERE clock_spans.state = 'pending'", w.clock)
        tx.executemany("INSERT INTO command_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT DO NOTHING", w.results)
        now = _now_ms()
        tx.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT DO NOTHING", [(*b, now) for b in w.batches])
        tx.executemany("INSERT INTO rejections (received_ms, topic, status, error, gateway_id, "
                       "kid, epoch, batch_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", w.rejections)
        rows = []
        for gw, ep in streams:
            state = verifier.stream_state(gw, ep)
            if state is None:
                continue
            received, dupes, batches = w.counts.get((gw, ep), (0, 0, 0))
            rows.append((state["highest_batch"], json.dumps(state),
                         json.dumps(verifier.missing(gw, ep)), received, dupes, batches,
                         state["low"], state["high"], now, gw, ep))
        tx.executemany("UPDATE streams SET highest_batch = ?, state = ?, holes = ?, "
                       "received = received + ?, duplicates = duplicates + ?, "
                       "batches = batches + ?, low_seq = ?, high_seq = ?, updated_ms = ? "
                       "WHERE gateway_id = ? AND epoch = ?", rows)

    def _write_readings(self, tx: Tx, w: _Writes) -> None:
        columns = ", ".join(_READING_COLUMNS)
        if tx.copy_new("readings", _READING_COLUMNS, w.readings, _READING_TYPES):
            pass  # the verifier's state said they were new, and they were: one COPY
        elif tx.dialect == "postgresql" and w.readings:
            # Some were there already (state and table disagree, e.g. after a restore): COPY
            # into a per-session staging table, then one idempotent INSERT ... SELECT.
            tx.execute("CREATE TEMP TABLE IF NOT EXISTS stage_readings "
                       "(LIKE readings) ON COMMIT DELETE ROWS")
            tx.copy("stage_readings", _READING_COLUMNS, w.readings, _READING_TYPES)
            tx.execute(f"INSERT INTO readings ({columns}) SELECT {columns} FROM stage_readings "  # noqa: S608 - fixed names
                       "ON CONFLICT DO NOTHING")
        else:
            marks = ", ".join("?" * len(_READING_COLUMNS))
            tx.executemany(f"INSERT INTO readings ({columns}) VALUES ({marks}) "  # noqa: S608 - fixed names
                           "ON CONFLICT DO NOTHING", w.readings)
        newer = ("excluded.ts > latest.ts OR (excluded.ts = latest.ts AND "
                 "(excluded.epoch, excluded.seq) > (latest.epoch, latest.seq))")
        sets = ", ".join(f"{c} = excluded.{c}" for c in _READING_COLUMNS[2:] if c != "point")
        upsert = (f"ON CONFLICT (gateway_id, point) DO UPDATE SET epoch = excluded.epoch, {sets} "
                  f"WHERE {newer}")
        latest = [w.latest[k] for k in sorted(w.latest)]
        if tx.dialect == "postgresql" and latest:
            # One statement for all points: COPY them into a staging table, upsert from it.
            tx.execute("CREATE TEMP TABLE IF NOT EXISTS stage_latest "
                       "(LIKE latest) ON COMMIT DELETE ROWS")
            tx.copy("stage_latest", _READING_COLUMNS, latest, _READING_TYPES)
            tx.execute(f"INSERT INTO latest ({columns}) SELECT {columns} FROM stage_latest "  # noqa: S608 - fixed names
                       f"ORDER BY gateway_id, point {upsert}")
        else:
            marks = ", ".join("?" * len(_READING_COLUMNS))
            tx.executemany(f"INSERT INTO latest ({columns}) VALUES ({marks}) {upsert}",  # noqa: S608 - fixed names
                           latest)


def _loss_row(gateway_id: str, loss: Loss) -> tuple[Any, ...]:
    ident = [loss.first_seq, loss.last_seq, loss.count, loss.first_ts, loss.last_ts,
             loss.reason]
    return (gateway_id, loss.epoch, json.dumps(ident), *ident)


def _clock_rows(gateway_id: str, epoch: int, spans: Any) -> list[tuple[Any, ...]]:
    """Batch key 9 items as rows; items of another shape are skipped (key 9 is an extension
    the decoder hands on unchecked)."""
    rows: list[tuple[Any, ...]] = []
    for item in spans if isinstance(spans, list) else ():
        if not (isinstance(item, list) and len(item) == 3 and all(
                type(x) is int for x in item[:2])):
            continue
        offset = item[2]
        if offset is None:
            rows.append((gateway_id, epoch, item[0], item[1], None, "pending"))
        elif offset is False:
            rows.append((gateway_id, epoch, item[0], item[1], None, "never"))
        elif type(offset) is int:
            rows.append((gateway_id, epoch, item[0], item[1], offset, "known"))
    return rows


def _result_row(gateway_id: str, message: Any, keys: _Keys) -> tuple[Any, ...] | None:
    """A signed command result as a row, when the gateway's own key signed it for itself."""
    if not isinstance(message, bytes):
        return None
    try:
        kid, payload = open1(message, keys)
        res = decode_result(payload)
    except (VerifyError, CommandFormatError):
        return None
    if res.gateway != gateway_id or keys.gateways.get(kid, gateway_id) != gateway_id:
        return None
    value = res.value.hex() if isinstance(res.value, bytes) else res.value
    return (gateway_id, res.ref, res.status, res.id, res.ts, res.point, json.dumps(value),
            res.reason, res.detail, res.code, message)

