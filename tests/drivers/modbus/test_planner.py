"""Block planner: table cases, and properties against a DP optimum and brute force."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus import codec
from drivers.modbus.codec import PointSpec
from drivers.modbus.planner import Block, limits, optimum, plan, plan_spans


def spec(address: int, kind: str = "u16", table: str = "holding", count: int | None = None,
         bit: int | None = None) -> PointSpec:
    n = count or codec.REGISTERS.get(kind, 1)
    return PointSpec(name=f"{table}{address}.{bit}", table=table,  # type: ignore[arg-type]
                     address=address, count=n, type=kind, bit=bit)  # type: ignore[arg-type]


@pytest.mark.parametrize(("spans", "limit", "gap", "blocks"), [
    ([(0, 2), (2, 2), (4, 2)], 125, 0, [(0, 6)]),
    ([(0, 2), (4, 2)], 125, 1, [(0, 2), (4, 2)]),
    ([(0, 2), (4, 2)], 125, 2, [(0, 6)]),
    ([(0, 1), (124, 1)], 125, 200, [(0, 125)]),
    ([(0, 1), (125, 1)], 125, 200, [(0, 1), (125, 1)]),
    ([(10, 2), (0, 2), (10, 2)], 125, 8, [(0, 12)]),
    ([(0, 4), (2, 1)], 125, 0, [(0, 4)]),
    ([(0, 100), (100, 30)], 125, 0, [(0, 100), (100, 30)]),
    ([], 125, 8, []),
])
def test_plan_spans(spans: list[tuple[int, int]], limit: int, gap: int,
                    blocks: list[tuple[int, int]]) -> None:
    assert plan_spans(spans, limit, gap) == blocks


def test_limits_per_table() -> None:
    assert limits("holding", 125, 8) == (125, 8)
    assert limits("input", 50, 0) == (50, 0)
    assert limits("coil", 125, 8) == (2000, 128)
    assert limits("discrete", 10, 1) == (160, 16)


def test_plan_groups_by_table_and_assigns_points() -> None:
    points = [spec(0, "f32", "input"), spec(2, "f32", "input"), spec(70, "f32", "input"),
              spec(0, table="coil"), spec(1, table="coil"), spec(3, "bit", bit=0),
              spec(3, "bit", bit=7), spec(4)]
    blocks = plan(points, max_block=125, max_gap=8)
    assert [(b.table, b.start, b.count, len(b.points)) for b in blocks] == [
        ("coil", 0, 2, 2), ("holding", 3, 2, 3), ("input", 0, 4, 2), ("input", 70, 2, 1)]


def test_energy_meter_profile_plan() -> None:
    from drivers.modbus.config import DeviceConfig  # noqa: PLC0415
    from drivers.modbus.profiles import resolve_points  # noqa: PLC0415

    points = resolve_points(DeviceConfig(name="m", unit=1, profile="energy-meter-3ph"))[0]
    assert [(b.start, b.count) for b in plan(points, max_gap=8)] == [
        (0, 18), (30, 6), (52, 2), (70, 6), (224, 2), (342, 2)]
    assert len(plan(points, max_gap=0)) == 6
    assert len(plan(points, max_gap=12)) == 5
    assert len(plan(points, max_gap=124)) == 2


def _feasible(block: list[tuple[int, int]], limit: int, gap: int) -> bool:
    """A block that reads exactly these spans: within the limit, no unused run over gap."""
    lo = min(s for s, _ in block)
    hi = max(s + c for s, c in block)
    used: set[int] = set()
    for s, c in block:
        used.update(range(s, s + c))
    run = 0
    for addr in range(lo, hi):
        run = 0 if addr in used else run + 1
        if run > gap:
            return False
    return hi - lo <= limit


def _brute_force(spans: list[tuple[int, int]], limit: int, gap: int) -> int:
    """Fewest feasible blocks over every partition of the spans (small inputs only)."""
    best = len(spans)

    def go(i: int, groups: list[list[tuple[int, int]]]) -> None:
        nonlocal best
        if len(groups) >= best:
            return
        if i == len(spans):
            if all(_feasible(g, limit, gap) for g in groups):
                best = len(groups)
            return
        for g in groups:
            g.append(spans[i])
            go(i + 1, groups)
            g.pop()
        groups.append([spans[i]])
        go(i + 1, groups)
        groups.pop()

    go(0, [])
    return best


@st.composite
def layouts(draw: st.DrawFn, max_points: int = 30) -> list[tuple[int, int]]:
    """Disjoint spans (identical duplicates allowed: aliases and bits of one register)."""
    spans: list[tuple[int, int]] = []
    address = draw(st.integers(0, 200))
    for _ in range(draw(st.integers(1, max_points))):
        count = draw(st.sampled_from([1, 1, 2, 2, 4, 8, 30]))
        if spans and draw(st.integers(0, 9)) == 0:
            spans.append(spans[-1])
            continue
        spans.append((address, count))
        address += count + draw(st.sampled_from([0, 0, 1, 3, 7, 12, 40, 130]))
    return spans


@settings(max_examples=150, deadline=None)
@given(layouts(), st.integers(1, 125), st.integers(0, 20))
def test_plan_is_exact_and_optimal(spans: list[tuple[int, int]], limit: int, gap: int) -> None:
    limit = max(limit, *(c for _, c in spans))
    blocks = plan_spans(spans, limit, gap)
    # Every span lies inside exactly one block, blocks are ordered and disjoint.
    for s, c in spans:
        assert sum(1 for b, n in blocks if b <= s and s + c <= b + n) == 1
    for (b1, n1), (b2, _n2) in pairwise(blocks):
        assert b1 + n1 <= b2
    covered = {(b, n): [sp for sp in set(spans) if b <= sp[0] < b + n] for b, n in blocks}
    assert all(_feasible(members, limit, gap) for members in covered.values())
    assert all(n <= limit and min(s for s, _ in covered[(b, n)]) == b for b, n in blocks)
    assert len(blocks) == optimum(spans, limit, gap)


@settings(max_examples=60, deadline=None)
@given(layouts(max_points=6), st.integers(1, 40), st.integers(0, 10))
def test_optimum_matches_brute_force(spans: list[tuple[int, int]], limit: int, gap: int) -> None:
    limit = max(limit, *(c for _, c in spans))
    unique = sorted(set(spans))
    assert optimum(spans, limit, gap) == _brute_force(unique, limit, gap) \
        == len(plan_spans(spans, limit, gap))


def test_plan_reads_every_point_exactly() -> None:
    """Decoding each point from its block equals decoding it from the device's registers."""
    rng = random.Random(5)
    registers = [rng.randrange(65536) for _ in range(600)]
    kinds = ["u16", "i16", "u32", "i32", "u64", "i64", "f64"]
    points: list[PointSpec] = []
    address = 0
    while address < 560:
        kind = rng.choice(kinds)
        points.append(spec(address, kind))
        address += codec.REGISTERS[kind] + rng.choice([0, 0, 1, 5, 20])
    for max_block, max_gap in [(125, 8), (10, 0), (4, 3), (125, 124)]:
        blocks: list[Block] = plan(points, max_block=max_block, max_gap=max_gap)
        seen = [p for b in blocks for p in b.points]
        assert sorted(seen, key=lambda p: p.address) == points
        for b in blocks:
            assert b.count <= max_block
            values = registers[b.start:b.start + b.count]
            for p in b.points:
                local = values[p.address - b.start:p.end - b.start]
                assert codec.decode(p, local) == codec.decode(p, registers[p.address:p.end])
