"""The hindsight oracle: the cheapest static clocks per phase at the reference SLO attainment."""

from __future__ import annotations

import pytest

from voltana.sim.oracle import clock_grid, hindsight_oracle
from voltana.sim.runner import SimulationSetup, parse_policy, run_policy
from voltana.sim.synthetic import synthetic_workload


def test_clock_grid_keeps_the_top_clock() -> None:
    assert clock_grid((1, 2, 3, 4, 5), 2) == (1, 3, 5)
    assert clock_grid((1, 2, 3, 4), 2) == (1, 3, 4)


@pytest.mark.slow
def test_oracle_matches_reference_attainment_with_no_more_energy(setup: SimulationSetup) -> None:
    workload = synthetic_workload(6.0, 15.0, seed=9)
    reference = run_policy(setup, parse_policy("static-max"), workload)
    choice = hindsight_oracle(setup, workload, reference, stride=3)
    assert choice.result.slo_attainment >= reference.slo_attainment - 1e-9
    assert choice.result.energy_j <= reference.energy_j
    assert choice.result.policy.startswith("oracle (P ")
    assert choice.runs >= 2 * 3 + 1
