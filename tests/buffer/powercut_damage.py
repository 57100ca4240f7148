"""The damage a power cut does to a buffer's files, applied to a copy of them.

Between two store operations the files are consistent; what a power cut can then take is what
was not yet on the medium. The database file is written only by checkpoints, which sync it;
the anchor is written in place and fdatasync'd (buffer/_anchor.py); the WAL is synced by
checkpoints and before a lease hands out new seqs, and not otherwise (``synchronous =
NORMAL``). So the damage is: the WAL cut at a frame boundary, or gone; the anchor slot being
written torn; and a reboot, which the store notices by the boot id.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["SLOT", "SUFFIXES", "Damage", "garble_slot", "read_files", "slot_generations",
           "wal_frames"]

#: The files that make up a buffer, by suffix of the database's name.
SUFFIXES = ("", "-wal", "-shm", ".anchor")
_WAL_HEADER = 32  # https://sqlite.org/fileformat2.html#walformat
_FRAME_HEADER = 24
#: WalCkptInfo.nBackfill in the -shm file: after the two 48-byte copies of the wal-index
#: header, in native byte order (https://sqlite.org/walformat.html#the_wal_index_file_format).
_BACKFILL = 96
SLOT = 16 * 1024  # an anchor slot (buffer/_anchor.py)
_SLOT_HEAD = struct.Struct("<4sIQI")


def read_files(path: Path) -> dict[str, bytes]:
    """The bytes of the buffer's files that exist now, by suffix (what a kill leaves)."""
    files = {}
    for suffix in SUFFIXES:
        try:
            files[suffix] = path.with_name(path.name + suffix).read_bytes()
        except FileNotFoundError:
            continue
    return files


def wal_frames(wal: bytes) -> tuple[int, int]:
    """(frame size, whole frames in the file) of a WAL file (fileformat2.html §4.1)."""
    if len(wal) < _WAL_HEADER:
        return 0, 0
    page_size = int.from_bytes(wal[8:12], "big")
    frame = _FRAME_HEADER + page_size
    return frame, (len(wal) - _WAL_HEADER) // frame


def backfilled(shm: bytes | None) -> int:
    """Frames of the current WAL already copied into the database file (and so synced)."""
    if shm is None or len(shm) < _BACKFILL + 4:
        return 0
    return int.from_bytes(shm[_BACKFILL:_BACKFILL + 4], sys.byteorder)


def slot_generations(anchor: bytes) -> list[int]:
    """The generation in each anchor slot's header (0 where the slot was never written)."""
    return [_SLOT_HEAD.unpack_from(anchor, i * SLOT)[2] if len(anchor) >= (i + 1) * SLOT
            else 0 for i in range(2)]


def garble_slot(anchor: bytes, index: int, seed: int) -> bytes:
    """The anchor with slot ``index`` overwritten by garbage (a write torn by a power cut)."""
    junk = random.Random(seed).randbytes(SLOT)
    return anchor[:index * SLOT] + junk + anchor[(index + 1) * SLOT:]


@dataclasses.dataclass(frozen=True, slots=True)
class Damage:
    """What a power cut does to a snapshot's files.

    ``wal``: "whole", "deleted" or "cut" (to ``frames`` whole frames after the header). A cut
    keeps every frame already backfilled into the database file: a checkpoint syncs the WAL
    before it copies a frame (https://sqlite.org/wal.html#checkpointing), so those frames were
    on the medium; replaying only part of them over the newer database pages would mix page
    versions, which no power cut produces. Cutting to 0 frames (nothing replayed) is allowed.
    ``torn``: the anchor's older slot (the one the next write goes to) is garbage.
    """

    wal: str
    frames: int
    reboot: bool
    torn: bool
    seed: int

    @classmethod
    def pick(cls, files: dict[str, bytes], rng: random.Random) -> Damage:
        _frame, total = wal_frames(files.get("-wal", b""))
        kind, frames = "whole", total
        roll = rng.random()
        if total and roll < 0.2:
            kind, frames = "deleted", 0
        elif total and roll < 0.8:
            low = min(backfilled(files.get("-shm")), total)
            kind, frames = "cut", 0 if rng.random() < 0.2 else rng.randint(low, total)
        return cls(kind, frames, reboot=rng.random() < 0.5, torn=rng.random() < 0.2,
                   seed=rng.getrandbits(32))

    def lay_out(self, files: dict[str, bytes], path: Path) -> None:
        for suffix, data in files.items():
            out = data
            if suffix == "-wal" and self.wal == "deleted":
                continue
            if suffix == "-wal" and self.wal == "cut":
                frame, _total = wal_frames(data)
                out = data[:_WAL_HEADER + self.frames * frame]
            if suffix == ".anchor" and self.torn:
                gens = slot_generations(data)
                out = garble_slot(data, gens.index(min(gens)), self.seed)
            path.with_name(path.name + suffix).write_bytes(out)
