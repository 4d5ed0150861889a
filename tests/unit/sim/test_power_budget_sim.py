"""The power budget in the simulator: the power cap's effect, 1 s power windows, the coordinator's runs and
``voltana simulate --power-budget(s)``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support.cli import simulate_in_process
from voltana.core.config import VoltanaConfig
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason, Phase, ScheduledRequest
from voltana.hardware.simulated import performance_model
from voltana.plugins import get_plugin_manager
from voltana.sim.cluster import ClusterSpec
from voltana.sim.power_budget import (
    COORDINATOR,
    ECOFREQ_CAPS,
    STATIC_CLOCK,
    BudgetRun,
    MeteredController,
    cluster_peak_power_w,
    gpu_power_limit_w,
    mean_decode_context,
    power_windows_w,
    run_budgeted,
)
from voltana.sim.power_budget_report import parse_budgets
from voltana.sim.runner import SimulationSetup, allowed_clocks_mhz, kv_bytes_per_token
from voltana.sim.synthetic import synthetic_workload
from voltana.sim.workload import Workload

from .test_simulate_cli import run_cli

MODEL = performance_model("a100-80gb", "llama-3.1-8b")


class _MaxClock:
    """A controller that always asks for the top clock."""

    def __init__(self, clocks: tuple[int, ...]) -> None:
        self.allowed_clocks_mhz = clocks
        self.ctx = SimpleNamespace(state={})

    def decide(self, snapshot: BatchSnapshot) -> ClockDecision:
        return ClockDecision(self.allowed_clocks_mhz[-1], DecisionReason.STATIC, "static-max")


def _prefill(tokens: int) -> BatchSnapshot:
    return BatchSnapshot.build(Phase.PREFILL, [ScheduledRequest("r", tokens, 0, 0.0)], now_s=0.0)


@pytest.mark.parametrize("tp", [1, 2])
def test_a_static_cap_runs_the_simulated_gpus_power_limit_per_gpu(tp: int) -> None:
    model = performance_model("a100-80gb", "llama-3.1-8b", tp)
    clocks = model.supported_clocks_mhz
    full_w = model.cost(Phase.PREFILL, 1, 8192, 0, clocks[-1]).avg_power_w  # whole instance, tp GPUs
    instance_cap_w = 0.6 * full_w
    limit_w = gpu_power_limit_w(model, instance_cap_w)
    assert limit_w == pytest.approx(instance_cap_w / tp)  # a power limit is per GPU
    policy_grid = (clocks[-1] - 200, clocks[-1])  # the policy's grid; the firmware is not bound to it
    metered = MeteredController(_MaxClock(policy_grid), Phase.PREFILL, "p", model, power_limit_w=limit_w)
    decision = metered.decide(_prefill(8192))
    clock = decision.clock_mhz
    assert clock == metered.meter.clock_mhz[-1] and clock not in policy_grid
    # The highest supported clock whose instance power fits the cap: the simulated GPU's own power capping.
    assert model.cost(Phase.PREFILL, 1, 8192, 0, clock).avg_power_w <= instance_cap_w
    above = clocks[clocks.index(clock) + 1]
    assert model.cost(Phase.PREFILL, 1, 8192, 0, above).avg_power_w > instance_cap_w
    assert metered.meter.energy_j[-1] == pytest.approx(model.cost(Phase.PREFILL, 1, 8192, 0, clock).energy_j)
    # Without a limit the policy's clock stands; a driver refuses limits below its minimum, so does the cap.
    free = MeteredController(_MaxClock(policy_grid), Phase.PREFILL, "q", model)
    assert free.decide(_prefill(8192)).clock_mhz == clocks[-1]
    assert gpu_power_limit_w(model, 1.0) == model.gpu.min_power_limit_w
    assert gpu_power_limit_w(model, 1e6) == model.gpu.tdp_w


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


def _scenario(seed: int) -> tuple[SimulationSetup, Workload, tuple[int, ...], float]:
    """2P+2D Llama-3.1-8B on A100s, 40 s of bursty synthetic arrivals at 12 req/s (gamma inter-arrivals), and
    the cluster's max-clock peak power (W)."""
    config = VoltanaConfig()
    setup = SimulationSetup(
        ClusterSpec(MODEL, 2, 2, kv_bytes_per_token=kv_bytes_per_token(MODEL)),
        config,
        get_plugin_manager().hook,
        seed,
    )
    workload = synthetic_workload(12.0, 40.0, seed, "bursty")
    clocks = allowed_clocks_mhz(config, MODEL)
    peak = cluster_peak_power_w(setup.cluster, clocks[-1], mean_decode_context(workload))
    return setup, workload, clocks, peak


@pytest.fixture(scope="module")
def setup_and_workload() -> tuple[SimulationSetup, Workload, tuple[int, ...], float]:
    return _scenario(0)


TIGHT_SEEDS = tuple(range(6))
"""Seeds of the tight-budget scenario: ~290 windows of 1 s in all (under 1 %: at most 2 windows)."""


@pytest.fixture(scope="module")
def tight_budget_runs() -> list[tuple[float, BudgetRun, BudgetRun]]:
    """(budget W, coordinator, ecofreq+caps) at 60 % of the max-clock peak for every seed of the scenario."""
    runs = []
    for seed in TIGHT_SEEDS:
        setup, workload, clocks, peak = _scenario(seed)
        budget = 0.6 * peak
        ours = run_budgeted(setup, workload, COORDINATOR, budget, clocks_mhz=clocks)
        caps = run_budgeted(setup, workload, ECOFREQ_CAPS, budget, clocks_mhz=clocks)
        assert ours.result.num_requests == caps.result.num_requests == len(workload)  # the same requests
        runs.append((budget, ours, caps))
    return runs


def test_the_coordinator_holds_a_tight_budget_under_bursts(
    tight_budget_runs: list[tuple[float, BudgetRun, BudgetRun]],
) -> None:
    """Issue #17's criterion: the cluster's power in 1 s windows is above the budget in under 1 % of them,
    judged over every seed (one seed's 50 windows cannot resolve 1 %), and on every seed sharing the budget by
    pressure loses no more SLO than splitting it evenly (``ecofreq+caps``).

    What the design charges for: every clock step the leftover budget buys (above an instance's need) at its
    busy-power increment, as if a burst kept the instance busy the whole period at that clock (a prefill
    burst at full token budgets), and an iteration still running at the period's start at the power it
    draws. What it does not bound: an instance busier than predicted at or below its need clock (its busy
    share is predicted at least ``burst_utilization``), or a decode batch that grows within the period;
    ``budget_margin`` (5 %) is kept for these, but nothing caps them, so the design guarantees no
    per-window bound and none is asserted: the criterion is the issue's share of windows. Before the
    charging, both prefill instances bursting at ceilings bought at half their busy power put ~2 % of these
    windows above the budget.
    """
    windows = sum(len(ours.window_power_w) for _, ours, _ in tight_budget_runs)
    over = sum(
        sum(1 for w in ours.window_power_w if w > budget * (1 + 1e-9))
        for budget, ours, _ in tight_budget_runs
    )
    assert windows >= 200 and over / windows < 0.01, (over, windows)
    for seed, (_, ours, caps) in zip(TIGHT_SEEDS, tight_budget_runs, strict=True):
        assert ours.infeasible_periods == 0, seed
        assert caps.over_budget_share == 0.0, seed  # budget/N caps are sized for the worst case here
        # Same budget, same requests: sharing it by pressure loses no more SLO than splitting it evenly.
        assert ours.result.slo_attainment >= caps.result.slo_attainment, seed


def test_static_clocks_hold_a_tight_budget_a_static_max_cluster_exceeds(setup_and_workload: tuple) -> None:
    setup, workload, clocks, peak = setup_and_workload
    budget = 0.6 * peak
    unbudgeted = run_budgeted(setup, workload, "static-max", None)
    assert max(unbudgeted.window_power_w) > budget  # without a budget the cluster goes above it
    static = run_budgeted(setup, workload, STATIC_CLOCK, budget, clocks_mhz=clocks)
    assert static.result.num_requests == unbudgeted.result.num_requests  # the same requests
    assert static.over_budget_share == 0.0
    assert static.static_clock_mhz is not None and static.static_clock_mhz < clocks[-1]


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


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("60%,,90%", "empty item"),
        ("60%,75%,", "empty item"),
        ("60%,60%", "repeats a budget"),
        ("600,60%", "repeats a budget"),  # the same watts written two ways
        ("0.6", "write 60% for a share"),
        ("60%,9", "write 60% for a share"),
        ("150%", "at most 100%"),
        ("inf", "positive number of watts"),
    ],
)
def test_budget_lists_refuse_empty_items_duplicates_and_likely_shares(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        parse_budgets(text, 1000.0)
    assert "\n" not in str(info.value)
    assert parse_budgets("100%,10", 1000.0) == [(1000.0, 1.0), (10.0, None)]  # the bounds are accepted


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
    labelled = run_cli(*args, "--power-budget", "60.25%")
    assert labelled.returncode == 0, labelled.stderr
    assert "(60.25%)" in labelled.stdout  # the share as given, not rounded to 60%
    share = run_cli(*args, "--power-budget", "60%", "--json")  # one budget, as a share: as --power-budgets
    assert share.returncode == 0, share.stderr
    assert [r for r in json.loads(share.stdout)["runs"] if r["budget_w"] is not None] == [
        r for r in data["runs"] if r["budget_w"] is not None
    ]
    for extra, words in (
        (("--power-budgets", "lots"), "a power budget is watts or a percentage of the max-clock peak"),
        (("--power-budget", "0.1%"), "--power-budget: '0.1%' of the max-clock peak ("),
        (("--power-budget", "-3"), "--power-budget: a power budget must be a positive number of watts"),
        (("--power-budget", "60%,70%"), "--power-budget takes one budget"),
        (("--power-budget", "150%"), "--power-budget: a share of the max-clock peak must be above 0%"),
        (
            ("--power-budget", "lots"),
            "--power-budget: a power budget is watts or a percentage of the max-clock peak (e.g. 900 or 60%)",
        ),
        (("--power-budget", "700", "--power-budgets", "60%"), "not both"),
        (("--power-budget", "0.6"), "write 60% for a share"),
        (("--power-budgets", "60%,,90%"), "empty item"),
        (("--power-budgets", "60%,60%"), "repeats a budget"),
        (("--power-budgets", "150%"), "at most 100%"),
        (("--power-budget", "700", "--policies", "bogus"), "drop --policies"),
    ):
        bad = run_cli(*args, *extra)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr


def test_simulate_notes_a_budget_above_the_peak_and_an_unused_config_budget(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--workload", "synthetic", "--rate", "2", "--duration", "5", "--json"]
    code, out, err = simulate_in_process([*args, "--power-budget", "100000"], monkeypatch, capsys)
    assert code == 0, err
    assert "above the cluster's max-clock peak" in err and "does not bind" in err
    json.loads(out)  # the note goes to stderr: --json output stays machine-readable
    monkeypatch.setenv("VOLTANA_CLUSTER__POWER_BUDGET_W", "800")
    code, out, err = simulate_in_process([*args, "--policies", "static-max"], monkeypatch, capsys)
    assert code == 0, err
    assert "cluster.power_budget_w = 800 W (config) is not used" in err and "--power-budget 800" in err
    json.loads(out)
