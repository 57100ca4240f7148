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


def test_bench_modbus_fleet_figures() -> None:
    figures = bench_modbus(1.0, devices=3, registers=20, interval=0.1)
    assert (figures["fleet_devices"], figures["fleet_registers"]) == (3, 20)
    assert figures["fleet_target_readings_per_s"] == 600
    assert figures["fleet_readings_per_s"] > 0
    assert figures["fleet_cpu_us_per_reading"] > 0
    assert 0 <= figures["fleet_polls_on_time_pct"] <= 100
    assert figures["fleet_lost"] >= 0
