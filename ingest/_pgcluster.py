"""A private PostgreSQL cluster: initdb into a temporary directory, a free loopback port, its
socket in that directory, stopped and removed at the end (tests and ``streetgate ingest bench``).

PostgreSQL refuses to run as root: when we run as root the cluster belongs to, and runs as,
the ``postgres`` system user (created by the distribution package). The binaries come from
PATH or the Debian layout (/usr/lib/postgresql/<major>/bin); when they are missing and we are
root in a source tree, the ``postgresql`` package is installed (``.ci/ensure-postgres``), else
the error names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from gateway.broker import free_port

__all__ = ["Postgres", "PostgresError", "find_bin_dir"]

_PACKAGE = "postgresql"
_ENSURE = Path(__file__).resolve().parents[1] / ".ci" / "ensure-postgres"
#: Tests only: durability off (fsync) for speed.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresError(RuntimeError):
    """PostgreSQL is missing or would not start."""


def find_bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


def _ensure_bin_dir() -> Path:
    found = find_bin_dir()
    if found is None and os.geteuid() == 0 and _ENSURE.exists():
        subprocess.run(["bash", str(_ENSURE)], check=True, timeout=600)  # noqa: S603, S607 - our script
        found = find_bin_dir()
    if found is None:
        raise PostgresError(f"PostgreSQL is not installed: `apt-get install {_PACKAGE}` "
                            "(as root), or put initdb and pg_ctl on PATH")
    return found


class Postgres:
    """One cluster; :attr:`url` reaches its ``postgres`` database as superuser.

    ``settings`` are server options (``-c name=value``); the default, :data:`FAST`, turns
    durability off, as tests want; pass ``{}`` for the distribution's durable defaults.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bin = _ensure_bin_dir()
        self.settings = dict(FAST if settings is None else settings)
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="streetgate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *cmd: str, timeout: float = 60) -> None:
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,  # noqa: S603 - our argv
                             check=False, cwd=self.root)
        if out.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise PostgresError(f"{cmd[0]} failed ({out.returncode}): {out.stderr.strip()}\n"
                                f"{log[-2000:]}")

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def start(self) -> None:
        if not self.data.exists():
            # Locale C: text keys compare byte-wise (as SQLite's do), without strcoll.
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        # Loopback and our socket directory only.
        opts = [f"-c listen_addresses={self.host}", f"-p {self.port}", f"-k {self.root}",
                "-c max_connections=50", *(f"-c {k}={v}" for k, v in self.settings.items())]
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", " ".join(opts),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg  # noqa: PLC0415

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)
