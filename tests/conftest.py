"""Shared fixtures: a real mosquitto per test on a free loopback port, and a private
PostgreSQL cluster per session with a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mosquitto import Mosquitto
from tests.helpers.postgres import Postgres


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One private PostgreSQL cluster for the session (initdb takes a few seconds)."""
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres(postgres_server: Postgres) -> str:
    """The URL of a fresh, empty database in the private cluster."""
    return postgres_server.create_database()
