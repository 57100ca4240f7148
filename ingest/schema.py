"""The ingest schema, one for SQLite and PostgreSQL, with forward migrations.

Every row a batch brings is keyed by what the gateway signed, so writing it twice is a no-op:
readings by ``(gateway_id, epoch, seq)``, batches by ``(gateway_id, epoch, batch_seq)``, gaps
by their seq range, losses by their wire fields, clock spans by their first seq, command
results by the command's signature ref and status. ``streams`` holds the verifier's state per
``(gateway_id, epoch)``: the seqs delivered and reported dropped or lost (as intervals), the
highest batch accepted, the open holes, and counters for the completeness report.
Indexes: readings by ``(gateway_id, point, ts)`` for a point's time range; ``latest`` answers
"latest value per point" without scanning readings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest._db import Database, Tx

__all__ = ["SCHEMA_VERSION", "migrate", "schema_version"]

_VALUE_COLUMNS = """quality SMALLINT NOT NULL,
    vkind SMALLINT NOT NULL,        -- 0 none, 1 bool, 2 int, 3 float, 4 text, 5 bytes
    vint BIGINT,                    -- bool and int (an int beyond 64 bits: vtext)
    vfloat DOUBLE PRECISION,        -- float (NaN and infinities: vtext "nan", "inf", "-inf")
    vtext TEXT,
    vbytes {BLOB}"""

_V1 = [
    """CREATE TABLE gateway_keys (
    kid TEXT PRIMARY KEY,           -- 16 hex digits, as the registrar names it
    gateway_id TEXT,                -- the one gateway it may sign for (NULL: any)
    public_key {BLOB} NOT NULL,     -- raw 32-byte Ed25519 key
    added_ms BIGINT NOT NULL,
    revoked_ms BIGINT)""",
    """CREATE TABLE streams (
    gateway_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    highest_batch BIGINT NOT NULL DEFAULT -1,
    state TEXT,                     -- ingest.verify stream state, JSON
    holes TEXT NOT NULL DEFAULT '[]',
    received BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0,
    batches BIGINT NOT NULL DEFAULT 0,
    low_seq BIGINT,
    high_seq BIGINT,
    updated_ms BIGINT,
    PRIMARY KEY (gateway_id, epoch))""",
    """CREATE TABLE batches (
    gateway_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    batch_seq BIGINT NOT NULL,
    status TEXT NOT NULL,           -- ok or duplicate
    kid TEXT NOT NULL,
    first_seq BIGINT,
    last_seq BIGINT,
    readings INTEGER NOT NULL,      -- new readings stored from it
    duplicates INTEGER NOT NULL,
    newest_ts BIGINT,
    received_ms BIGINT NOT NULL,
    committed_ms BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, epoch, batch_seq))""",
    f"""CREATE TABLE readings (
    gateway_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    point TEXT NOT NULL,
    unit TEXT,
    ts BIGINT NOT NULL,
    {_VALUE_COLUMNS},
    PRIMARY KEY (gateway_id, epoch, seq))""",
    "CREATE INDEX readings_point_ts ON readings (gateway_id, point, ts)",
    f"""CREATE TABLE latest (
    gateway_id TEXT NOT NULL,
    point TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    unit TEXT,
    ts BIGINT NOT NULL,
    {_VALUE_COLUMNS},
    PRIMARY KEY (gateway_id, point))""",
    """CREATE TABLE gaps (
    gateway_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    count BIGINT NOT NULL,
    first_ts BIGINT NOT NULL,
    last_ts BIGINT NOT NULL,
    points TEXT NOT NULL,           -- JSON list; "truncated" says when the gateway capped it
    PRIMARY KEY (gateway_id, epoch, first_seq, last_seq))""",
    """CREATE TABLE losses (
    gateway_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    ident TEXT NOT NULL,            -- JSON of the wire fields: the same record has the same one
    first_seq BIGINT,
    last_seq BIGINT,
    count BIGINT,
    first_ts BIGINT,
    last_ts BIGINT,
    reason TEXT NOT NULL,
    PRIMARY KEY (gateway_id, epoch, ident))""",
    """CREATE TABLE clock_spans (
    gateway_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    offset_ms BIGINT,               -- true time = ts + offset_ms
    state TEXT NOT NULL,            -- known, pending (a later batch says) or never
    PRIMARY KEY (gateway_id, epoch, first_seq))""",
    """CREATE TABLE command_results (
    gateway_id TEXT NOT NULL,
    ref {BLOB} NOT NULL,            -- first 16 bytes of the command's signature
    status TEXT NOT NULL,
    command_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    point TEXT,
    value TEXT,                     -- JSON
    reason TEXT,
    detail TEXT,
    code BIGINT,
    message {BLOB} NOT NULL,        -- the signed result, byte for byte
    PRIMARY KEY (gateway_id, ref, status))""",
    "CREATE INDEX command_results_id ON command_results (gateway_id, command_id)",
    """CREATE TABLE rejections (
    id {ID},
    received_ms BIGINT NOT NULL,
    topic TEXT NOT NULL,
    status TEXT NOT NULL,           -- replay, unknown-key, bad-signature, malformed, wrong-topic
    error TEXT,
    gateway_id TEXT,
    kid TEXT,
    epoch BIGINT,
    batch_seq BIGINT)""",
    "CREATE INDEX rejections_gateway ON rejections (gateway_id, epoch)",
]

#: Index i holds the statements that take the schema from version i to i + 1.
MIGRATIONS: list[list[str]] = [_V1]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(tx: Tx) -> int:
    tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = tx.one("SELECT MAX(version) FROM schema_version")
    return int(row[0]) if row and row[0] is not None else 0


def migrate(db: Database) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before."""
    from ingest._db import DatabaseError  # noqa: PLC0415

    with db.transaction() as tx:
        if tx.dialect == "postgresql":
            # Workers starting together: one migrates, the others wait and find it done.
            tx.execute("SELECT pg_advisory_xact_lock(7158277)")
        found = schema_version(tx)
        if found > SCHEMA_VERSION:
            raise DatabaseError(f"the database has schema version {found}; this streetgate "
                                f"knows up to {SCHEMA_VERSION}: upgrade it")
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                tx.execute(statement)
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
    return found
