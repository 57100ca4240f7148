"""Read-only look at a buffer file, for ``streetgate buffer stats`` while a daemon runs.

Unlike :class:`buffer.store.Store` it never moves a file aside, migrates or writes: pointed at
the wrong file it says so and changes nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from buffer._anchor import Anchor
from buffer._db import StoreError, file_bytes

__all__ = ["inspect_buffer"]

_V1_DEPTH = "SELECT count(*), min(ts) FROM readings"  # a buffer not yet migrated


def inspect_buffer(path: Path) -> dict[str, Any]:
    """Depth, oldest reading, size, gaps waiting to go upstream; raises StoreError."""
    if not path.is_file():
        raise StoreError(f"no buffer file at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        query = (_V1_DEPTH if version == 1 else
                 "SELECT ifnull(sum(hi - lo + 1), 0), min(ts_min) FROM chunks WHERE lo <= hi")
        depth, oldest = conn.execute(query).fetchone()
        top = 0 if version == 1 else conn.execute(
            "SELECT ifnull(max(hi), 0) FROM chunks").fetchone()[0]
        top_gap = conn.execute("SELECT ifnull(max(last_seq), 0) FROM gaps").fetchone()[0]
        gaps, dropped = conn.execute(
            "SELECT count(*), coalesce(sum(count), 0) FROM gaps").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a streetgate buffer: {exc}") from exc
    finally:
        conn.close()
    anchor, _ = Anchor(path.with_name(path.name + ".anchor")).read()
    return {
        "losses_pending": len(anchor.losses) if anchor else None,
        "clean_stop": anchor.clean if anchor else None,
        "depth": depth, "oldest_ts": oldest, "file_bytes": file_bytes(path),
        "gaps_pending": gaps, "dropped": dropped, "epoch": meta.get("epoch"),
        "last_seq": max(meta.get("seq_hwm") or 0, top, top_gap,
                        anchor.seq_floor if anchor else 0),
        "schema_version": version,
    }
