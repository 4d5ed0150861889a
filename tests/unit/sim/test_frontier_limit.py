"""Frontier (saving vs attainment over safety margins) and the least-energy limit on a run's own batches."""

from __future__ import annotations

import pytest

from voltana.sim.frontier import FrontierPoint, best_at, compare_at_floor, margin_sweep, pareto, with_margin
from voltana.sim.limit import gap_closed, run_with_limit
from voltana.sim.runner import SimulationSetup, parse_policy, static_spec
from voltana.sim.synthetic import synthetic_workload


def point(policy: str, saving: float, ttft: float, itl: float) -> FrontierPoint:
    return FrontierPoint(policy, 0.0, saving, min(ttft, itl), ttft, itl, 1.0 - saving)


def test_pareto_keeps_only_points_no_other_beats_on_both_axes() -> None:
    a, b, c, d = (
        point("x", 0.3, 1, 0.97),
        point("x", 0.2, 1, 1.0),
        point("x", 0.1, 1, 0.99),
        point("x", 0.3, 1, 0.9),
    )
    assert pareto([a, b, c, d]) == [a, b]


def test_equal_attainment_compares_best_savings_at_static_max_floors() -> None:
    ours = [point("ours", 0.25, 1.0, 1.0), point("ours", 0.35, 1.0, 0.95)]
    theirs = [point("paper", 0.33, 1.0, 0.979), point("paper", 0.2, 1.0, 0.998)]
    static_max = type("R", (), {"ttft_attainment": 1.0, "itl_attainment": 1.0})()
    verdict = compare_at_floor(ours, theirs, static_max)  # type: ignore[arg-type]
    assert verdict.itl_floor == pytest.approx(0.995)
    assert verdict.ours == ours[0] and verdict.theirs == theirs[1]
    assert verdict.ours_wins
    assert best_at(theirs, 1.0, 0.999) is None
    beaten = compare_at_floor([ours[0]], [point("paper", 0.3, 1.0, 1.0)], static_max)  # type: ignore[arg-type]
    assert not beaten.ours_wins


def test_with_margin_sets_the_safety_margin_both_policies_read(setup: SimulationSetup) -> None:
    assert with_margin(setup, 0.3).config.policy.safety_margin == 0.3
    assert setup.config.policy.safety_margin != 0.3


def test_the_limit_prices_the_same_batches_below_any_clock_choice(setup: SimulationSetup) -> None:
    workload = synthetic_workload(6.0, 20.0, seed=3)
    top = run_with_limit(setup, static_spec(1410, 1410, "static-max"), workload)
    # Re-pricing the iterations at the clocks they ran reproduces the simulator's energy: same batches.
    assert top.repriced_j == pytest.approx(top.result.energy_j, rel=1e-9)
    assert top.limit_j < 0.9 * top.result.energy_j
    ours = run_with_limit(setup, parse_policy("ecofreq+ecoroute"), workload)
    assert ours.limit_j <= ours.result.energy_j + 1e-6
    # Batches differ between policies (routing, batch sizes at lower clocks): the common reference is the
    # least of the runs' limits, which every run's own limit bounds from above.
    closed = gap_closed(top.result.energy_j, ours.result.energy_j, min(top.limit_j, ours.limit_j))
    assert 0.0 < closed < 1.0
    assert gap_closed(100.0, 100.0, 50.0) == 0.0 and gap_closed(100.0, 50.0, 50.0) == 1.0


def test_margin_sweep_gives_one_point_per_margin(setup: SimulationSetup) -> None:
    workload = synthetic_workload(4.0, 10.0, seed=1)
    points = margin_sweep(setup, "voltana-paper", workload, static_max_j=1e9, margins=(0.0, 0.4))
    assert [p.margin for p in points] == [0.0, 0.4]
    assert all(0.0 < p.saving < 1.0 and 0.0 <= p.slo_attainment <= 1.0 for p in points)
    # A larger margin shrinks the SLO the paper policy plans with: never less energy.
    assert points[1].energy_j >= points[0].energy_j * 0.999
