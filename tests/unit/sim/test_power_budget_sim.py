"""The power budget in the simulator: the power cap's effect, 1 s power windows, the coordinator's runs and
``voltana simulate --power-budget(s)``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase
from voltana.hardware.simulated import performance_model
from voltana.plugins import get_plugin_manager
from voltana.sim.cluster import ClusterSpec
from voltana.sim.power_budget import (
    COORDINATOR,
    ECOFREQ_CAPS,
    STATIC_CLOCK,
    MeteredController,
    capped_clock_mhz,
    cluster_peak_power_w,
    mean_decode_context,
    power_windows_w,
    run_budgeted,
)
from voltana.sim.power_budget_report import parse_budgets
from voltana.sim.runner import SimulationSetup, allowed_clocks_mhz, kv_bytes_per_token
from voltana.sim.synthetic import synthetic_workload

from .test_simulate_cli import run_cli

MODEL = performance_model("a100-80gb", "llama-3.1-8b")
CLOCKS = MODEL.supported_clocks_mhz


def test_a_power_cap_lowers_the_clock_until_the_batch_fits() -> None:
    full = MODEL.cost(Phase.PREFILL, 1, 8192, 0, CLOCKS[-1]).avg_power_w
    cap_w = 0.6 * full
    clock = capped_clock_mhz(MODEL, Phase.PREFILL, 1, 8192, 0, CLOCKS[-1], cap_w, CLOCKS)
    assert clock < CLOCKS[-1]
    assert MODEL.cost(Phase.PREFILL, 1, 8192, 0, clock).avg_power_w <= cap_w
    above = CLOCKS[CLOCKS.index(clock) + 1]
    assert MODEL.cost(Phase.PREFILL, 1, 8192, 0, above).avg_power_w > cap_w  # the highest that fits
    # A generous cap leaves the policy's clock; a cap below idle gives the lowest clock.
    assert capped_clock_mhz(MODEL, Phase.PREFILL, 1, 8192, 0, 1200, 2 * full, CLOCKS) == 1200
    assert capped_clock_mhz(MODEL, Phase.PREFILL, 1, 8192, 0, 1410, 1.0, CLOCKS) == CLOCKS[0]


class _Stub:
    allowed_clocks_mhz = (1000,)


def test_power_windows_add_busy_energy_and_idle_power() -> None:
    meter = MeteredController(_Stub(), Phase.DECODE, "d", MODEL)
    meter.meter.start_s[:] = [0.5]
    meter.meter.latency_s[:] = [1.0]
    meter.meter.energy_j[:] = [300.0]
    idle = MeteredController(_Stub(), Phase.DECODE, "e", MODEL)  # never ran: idle power throughout
    windows = power_windows_w([meter, idle], idle_w=10.0, span_s=2.0)
    # Window 0: 150 J busy + 0.5 s idle + the idle instance's 10 J; window 1 the same.
    assert windows == pytest.approx(np.array([150 + 5 + 10, 150 + 5 + 10]))
    assert len(power_windows_w([meter], 10.0, 2.2)) == 2  # a last 0.2 s window is too short to judge


@pytest.fixture(scope="module")
def setup_and_workload() -> tuple[SimulationSetup, object, tuple[int, ...], float]:
    config = VoltanaConfig()
    setup = SimulationSetup(
        ClusterSpec(MODEL, 2, 2, kv_bytes_per_token=kv_bytes_per_token(MODEL)),
        config,
        get_plugin_manager().hook,
        0,
    )
    workload = synthetic_workload(12.0, 40.0, 0, "bursty")
    clocks = allowed_clocks_mhz(config, MODEL)
    peak = cluster_peak_power_w(setup.cluster, clocks[-1], mean_decode_context(workload))
    return setup, workload, clocks, peak


def test_the_coordinator_and_the_caps_hold_a_tight_budget(setup_and_workload: tuple) -> None:
    setup, workload, clocks, peak = setup_and_workload
    budget = 0.6 * peak
    unbudgeted = run_budgeted(setup, workload, "static-max", None)
    assert max(unbudgeted.window_power_w) > budget  # without a budget the cluster goes above it
    ours = run_budgeted(setup, workload, COORDINATOR, budget, clocks_mhz=clocks)
    caps = run_budgeted(setup, workload, ECOFREQ_CAPS, budget, clocks_mhz=clocks)
    static = run_budgeted(setup, workload, STATIC_CLOCK, budget, clocks_mhz=clocks)
    for run in (ours, caps, static):
        assert run.result.num_requests == unbudgeted.result.num_requests  # the same requests
        assert run.over_budget_share == 0.0, run.policy
    assert ours.infeasible_periods == 0
    assert static.static_clock_mhz is not None and static.static_clock_mhz < clocks[-1]
    # Same budget, same requests: sharing it by pressure loses no more SLO than splitting it evenly.
    assert ours.result.slo_attainment >= caps.result.slo_attainment


def test_an_impossible_budget_is_reported(setup_and_workload: tuple) -> None:
    setup, workload, clocks, peak = setup_and_workload
    run = run_budgeted(setup, workload, COORDINATOR, 0.05 * peak, clocks_mhz=clocks)
    assert run.infeasible_periods > 0
    assert run.over_budget_share > 0.5  # not hidden: the windows show the overshoot


def test_budgets_parse_watts_and_shares() -> None:
    assert parse_budgets("60%, 900", 1000.0) == [(600.0, 0.6), (900.0, None)]
    for bad in ("", "abc", "-5", "0%"):
        with pytest.raises(ValueError):
            parse_budgets(bad, 1000.0)


def test_simulate_power_budgets_json_and_errors() -> None:
    args = ("--workload", "synthetic", "--rate", "6", "--duration", "15")
    result = run_cli(*args, "--power-budgets", "60%", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    policies = [(run["policy"], run["budget_share"]) for run in data["runs"]]
    assert ("ecofreq+coordinator", 0.6) in policies and ("static-max+caps", 0.6) in policies
    assert ("static-max", None) in policies
    assert data["meta"]["clocks_mhz"][0] < 1005  # a budget run uses the GPU's whole clock range
    for run in data["runs"]:
        assert {"ttft_attainment", "itl_attainment", "energy_j", "over_budget_share"} <= set(run)
    table = run_cli(*args, "--power-budget", "700")
    assert table.returncode == 0, table.stderr
    assert "ecofreq+coordinator" in table.stdout and "> budget" in table.stdout
    for extra, words in (
        (("--power-budgets", "lots"), "power budgets are watts or percentages"),
        (("--power-budget", "-3"), "--power-budget must be a positive number of watts"),
        (("--power-budget", "700", "--power-budgets", "60%"), "not both"),
    ):
        bad = run_cli(*args, *extra)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr
