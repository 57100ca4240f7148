"""Fixtures for the ingest: each storage test runs on SQLite and on the private PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingest._db import Database, open_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ingest.db'}"
    return str(request.getfixturevalue("postgres"))


@pytest.fixture
def open_db() -> Iterator[Callable[[str], Database]]:
    """``open_db(url)``: a migrated database, closed at the end of the test."""
    opened: list[Database] = []

    def _open(url: str) -> Database:
        opened.append(open_database(url))
        return opened[-1]

    yield _open
    for db in opened:
        db.close()
