"""What a restart from a power-cut snapshot must show, and the figures over many of them.

Three rules (the issue's wording: "every restart opens, never reuses a seq, and the platform
sees every reading or a record covering it"):

* the restarted store opens (no exception), and every batch it signs is accepted as new or as
  a benign resend (verifier status ``ok`` or ``duplicate``);
* no ``(epoch, seq)`` carries two reading ids, and no ``(epoch, batch_seq)`` two different
  messages, across everything signed before the cut and after the restart; a batch signed
  after the restart in an epoch seen before has a batch_seq above every earlier one;
* every reading emitted before the cut was delivered (before or after), or a record covers it:
  a gap or loss of its epoch whose seq range holds its seq; for a reading no lease carried
  (its seq never left the gateway, so the seq may be given again), also a seq-less loss or a
  gap whose time range holds its ts; for one never committed, also an open-ended loss of its
  epoch.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from collections import Counter
from typing import TYPE_CHECKING

from tests.buffer.powercut import Knobs, Writer, restart
from tests.buffer.powercut_damage import Damage

if TYPE_CHECKING:
    from pathlib import Path

    from tests.buffer.powercut import After, Platform, Sent, Snapshot, Truth

__all__ = ["Figures", "check", "soak"]

#: Readings named in one problem line at most.
_SHOWN = 8


@dataclasses.dataclass(slots=True)
class Figures:
    """Counts over all restarts of a test."""

    runs: int = 0
    snapshots: int = 0  # restarts tried
    readings: int = 0  # emitted by the writers
    new_epoch: int = 0  # restarts that started a new epoch
    moved_aside: int = 0
    twice: int = 0  # readings the platform got under two epochs
    late: int = 0  # batches signed before a cut that reached the platform after it
    holes: int = 0  # restarts after which the verifier still listed missing seqs
    reboots: int = 0
    torn: int = 0
    wal: Counter[str] = dataclasses.field(default_factory=Counter)
    losses: Counter[str] = dataclasses.field(default_factory=Counter)  # new after restarts
    gaps: int = 0  # gap records the platform saw, writers and restarts together
    problems: list[str] = dataclasses.field(default_factory=list)

    def add(self, snap: Snapshot, damage: Damage, after: After) -> None:
        self.new_epoch += after.epoch != snap.epoch
        self.moved_aside += after.moved_aside
        self.twice += twice(after.platform)
        self.late += after.late
        self.holes += bool(after.platform.holes())
        self.reboots += damage.reboot
        self.torn += damage.torn
        self.wal[damage.wal] += 1
        self.losses.update(x.reason for x in after.platform.losses[len(snap.platform.losses):])
        self.gaps += len(after.platform.gaps) - len(snap.platform.gaps)

    def summary(self) -> str:
        return (f"{self.runs} writer runs, {self.readings} readings, {self.snapshots} snapshots"
                f" (WAL {dict(self.wal)}, {self.reboots} reboots, {self.torn} torn anchors):"
                f" {self.new_epoch} restarts started a new epoch, {self.moved_aside} moved a"
                f" file aside, {self.twice} readings delivered under two epochs, {self.late}"
                f" batches arrived after the cut, loss records {dict(self.losses)},"
                f" {self.gaps} gap records, {self.holes} restarts left holes in the verifier")


def twice(platform: Platform) -> int:
    """Readings delivered under more than one epoch (survivors renumbered into a new one)."""
    epochs: dict[int, set[int]] = {}
    for epoch, _seq, rid in platform.delivered:
        epochs.setdefault(rid, set()).add(epoch)
    return sum(len(e) > 1 for e in epochs.values())


def check(snap: Snapshot, truth: Truth, before: list[Sent], after: After) -> list[str]:
    """Problems with one restart (empty when all three rules hold)."""
    problems = [f"the verifier said {status!r} to {n} batch(es) the restarted store signed"
                for status, n in after.statuses.items() if status not in ("ok", "duplicate")]
    problems += reused(before[:snap.sent], after.sent)
    if after.stuck:
        problems.append(f"the store still holds {after.stuck} readings that no lease hands out")
    holes = after.platform.holes()
    if holes:
        problems.append("the verifier lists seqs as missing that nothing accounts for: "
                        + "; ".join(f"{'new' if e == after.epoch else 'old'} epoch {e}:"
                                    f" {h[:4]}" for e, h in holes.items()))
    got = {rid for _e, _s, rid in after.platform.delivered}
    if not set(after.fresh) <= got:
        problems.append(f"{len(set(after.fresh) - got)} readings appended after the restart"
                        " were not delivered")
    lost = uncovered(snap, truth, after.platform)
    if lost:
        shown = ", ".join(f"{rid} (ts {truth.ts[rid]}, seq {_seq(truth, snap, rid)})"
                          for rid in lost[:_SHOWN])
        problems.append(f"{len(lost)} readings neither delivered nor covered by a record:"
                        f" {shown}; records: {after.platform.losses}")
    return problems


def _seq(truth: Truth, snap: Snapshot, rid: int) -> str:
    if rid >= snap.committed:
        return "none, never committed"
    left = truth.leased.get(rid, snap.step + 1) <= snap.step
    return f"{truth.seq[rid]}{' leased' if left else ''}"


def reused(before: list[Sent], after: list[Sent]) -> list[str]:
    """Seqs or batch seqs given twice (see the module docstring)."""
    problems: list[str] = []
    ids: dict[tuple[int, int], int] = {}
    messages: dict[tuple[int, int], bytes] = {}
    top: dict[int, int] = {}
    for when, batches in (("before", before), ("after", after)):
        for sent in batches:
            key = (sent.epoch, sent.batch_seq)
            if messages.setdefault(key, sent.message) != sent.message:
                problems.append(f"epoch {sent.epoch} batch_seq {sent.batch_seq} signed twice"
                                f" with different content ({when} the cut)")
            if when == "after" and sent.batch_seq <= top.get(sent.epoch, 0):
                problems.append(f"epoch {sent.epoch}: batch_seq {sent.batch_seq} after the"
                                f" restart is not above {top[sent.epoch]} from before")
            for seq, rid in sent.seqs:
                if ids.setdefault((sent.epoch, seq), rid) != rid:
                    problems.append(f"epoch {sent.epoch} seq {seq} carried reading"
                                    f" {ids[sent.epoch, seq]} and then reading {rid}")
        for sent in batches:
            top[sent.epoch] = max(top.get(sent.epoch, 0), sent.batch_seq)
    return problems


class Records:
    """The gaps and loss records a platform saw, asked whether they cover a reading."""

    def __init__(self, platform: Platform) -> None:
        self.spans: list[tuple[int, int, int | None]] = [  # (epoch, first_seq, last_seq)
            (e, g.first_seq, g.last_seq) for e, g in platform.gaps]
        self.spans += [(x.epoch, x.first_seq, x.last_seq) for x in platform.losses
                       if x.first_seq is not None]
        self.times: list[tuple[int | None, int | None]] = [
            (g.first_ts, g.last_ts) for _e, g in platform.gaps]
        self.times += [(x.first_ts, x.last_ts) for x in platform.losses if x.first_seq is None]
        self.open_ended = {x.epoch for x in platform.losses
                           if x.first_seq is not None and x.last_seq is None}

    def by_seq(self, epoch: int, seq: int) -> bool:
        return any(e == epoch and a <= seq and (b is None or seq <= b) for e, a, b in self.spans)

    def by_time(self, ts: int) -> bool:
        return any((a is None or a <= ts) and (b is None or ts <= b) for a, b in self.times)


def uncovered(snap: Snapshot, truth: Truth, platform: Platform) -> list[int]:
    """Ids emitted before the cut that were not delivered and that no record covers."""
    got = {rid for _e, _s, rid in platform.delivered}
    records = Records(platform)
    out = []
    for rid in range(snap.emitted):
        if rid in got:
            continue
        seq = truth.seq[rid] if rid < snap.committed else None
        if seq is not None and records.by_seq(snap.epoch, seq):
            continue
        left = truth.leased.get(rid, snap.step + 1) <= snap.step
        if not left and records.by_time(truth.ts[rid]):
            continue  # its seq never left: it may be given again, so only the time counts
        if seq is None and snap.epoch in records.open_ended:
            continue  # never committed: it would have had a seq in the epoch that ended
        out.append(rid)
    return out


def soak(root: Path, seed: int, snapshots: int, figures: Figures, *, small: bool) -> None:
    """One writer run with ``snapshots`` restarts at random steps; problems go to figures."""
    rng = random.Random(seed)
    writer = Writer(root / "live", rng, Knobs.pick(rng, small=small))
    steps = snapshots * rng.randint(20, 40)
    at = set(rng.sample(range(1, steps + 1), snapshots))
    try:
        for step in range(1, steps + 1):
            writer.step()
            if step in at:
                _cut(writer, root / f"cut-{step}", random.Random(f"{seed}/{step}"), figures,
                     f"seed {seed} step {step}")
    finally:
        writer.close()
    figures.runs += 1
    figures.readings += len(writer.truth.ts)
    figures.gaps += len(writer.platform.gaps)


def _cut(writer: Writer, where: Path, rng: random.Random, figures: Figures, label: str) -> None:
    snap = writer.snapshot()
    damage = Damage.pick(snap.files, rng)
    figures.snapshots += 1
    try:
        after = restart(snap, damage, where, rng)
    except Exception as exc:  # noqa: BLE001 - every way a restart fails is a finding to list
        figures.problems.append(f"{label} ({damage}): restart failed: {exc!r}")
        return
    # Only the writer's state before the cut counts: the snapshot bounds it.
    problems = check(snap, writer.truth, writer.sent, after)
    figures.add(snap, damage, after)
    figures.problems += [f"{label} ({damage}): {p}" for p in problems]
    if not problems:
        shutil.rmtree(where)
