"""Room for acknowledgements on a full disk: a preallocated file given back when the disk fills.

An ack is a DELETE, and in WAL mode a DELETE needs WAL pages before it frees anything
(https://sqlite.org/wal.html). On a full filesystem the acks then fail, nothing is ever
deleted, and the buffer can never drain. So the buffer keeps ``buffer.db.reserve`` allocated
while there is room, and unlinks it the first time an ack fails with SQLITE_FULL: the acks go
through, their pages return to the database's freelist, and new commits reuse those pages.
The reserve comes back once the filesystem has twice its size free again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Reserve", "free_bytes"]

log = logging.getLogger("streetgate.buffer")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Reserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def ensure(self) -> bool:
        """Allocate the reserve when it is missing and the disk has room; True when present."""
        if self.present:
            return True
        try:
            if free_bytes(self.path.parent) < 2 * self.size:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("cannot allocate the buffer's reserve %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        return True

    def release(self) -> bool:
        """Give the reserve back to the filesystem; True when there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
