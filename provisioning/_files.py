"""Atomic, permission-safe file writes for keys, certificates and state."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ensure_dir", "remove_securely", "write_private", "write_public"]


def ensure_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` (and parents) with ``mode``; tighten it if it already exists."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if path.stat().st_mode & 0o777 != mode:
        path.chmod(mode)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int, *, own_dir: bool = False) -> None:
    # Write a temp file created with its final mode (never briefly world-readable), fsync,
    # then rename over the target so a power cut leaves the old or the new file, never half.
    if own_dir:
        ensure_dir(path.parent, 0o700)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; a public file must be readable
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes, *, own_dir: bool = True) -> None:
    """Atomically write a secret: mode 0600, and its parent directory 0700 unless ``own_dir``
    is false (a directory shared with others, such as ``/etc/mosquitto``, keeps its mode)."""
    _write(path, data, 0o600, own_dir=own_dir)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write a non-secret file (certificate, public key): mode 0644."""
    _write(path, data, 0o644)


def remove_securely(path: Path) -> None:
    """Overwrite ``path`` with zeros, then unlink it.

    On SD cards wear levelling may keep the old blocks, so the overwrite is best effort;
    what matters is that no file holding the secret remains.
    """
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.write(b"\0" * size)
        fh.flush()
        os.fsync(fh.fileno())
    path.unlink()
    fsync_dir(path.parent)
