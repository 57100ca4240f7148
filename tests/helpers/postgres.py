"""A private PostgreSQL cluster for tests: see :mod:`ingest._pgcluster` (shared with
``streetgate ingest bench``)."""

from __future__ import annotations

from ingest._pgcluster import Postgres, PostgresError, find_bin_dir

__all__ = ["Postgres", "PostgresError", "find_bin_dir"]
