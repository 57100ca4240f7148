"""The bench function runs and reports consistent figures (no timing asserts)."""

from __future__ import annotations

import pytest

from drivers.modbus.bench import bench_modbus


def test_bench_modbus_figures() -> None:
    figures = bench_modbus(1.0)
    assert figures["polls_per_s"] > 0
    assert figures["pipelined_polls_per_s"] > 0
    assert figures["registers_per_s"] == pytest.approx(figures["polls_per_s"] * 36)
    assert figures["planned_transactions_per_poll"] == figures["optimum_transactions_per_poll"]
    assert figures["optimum_transactions_per_poll"] == 6
    assert figures["naive_transactions_per_poll"] == 18
    assert 5 <= figures["transactions_per_poll"] <= 7
