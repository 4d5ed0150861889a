"""Frontiers over several arrival draws: per-margin means and the paired bootstrap interval."""

from __future__ import annotations

import pytest

from voltana.sim.frontier import FrontierPoint, best_at, mean_frontier, paired_interval


def at(margin: float, saving: float, itl: float, policy: str = "paper") -> FrontierPoint:
    return FrontierPoint(policy, margin, saving, itl, 1.0, itl, 1.0 - saving)


def test_mean_frontier_averages_each_margin_over_the_draws() -> None:
    draws = [
        [at(0.1, 0.30, 1.00), at(0.0, 0.34, 0.90)],  # order within a draw does not matter
        [at(0.0, 0.36, 0.86), at(0.1, 0.32, 0.98)],
    ]
    zero, tenth = mean_frontier(draws)
    assert (zero.margin, tenth.margin) == (0.0, 0.1)
    assert zero.saving == pytest.approx(0.35) and zero.itl_attainment == pytest.approx(0.88)
    assert tenth.saving == pytest.approx(0.31) and tenth.itl_attainment == pytest.approx(0.99)
    assert tenth.energy_j == pytest.approx(0.69) and tenth.policy == "paper"


def test_a_margin_that_wins_one_draw_by_luck_loses_on_the_means() -> None:
    """The paper policy's margin 0.1 keeps 99.8% on one draw and 88% on the other: on one draw it is the best
    point at a 99.5% floor, on the means it does not reach the floor at all."""
    lucky, unlucky = [at(0.1, 0.326, 0.998)], [at(0.1, 0.33, 0.88)]
    assert best_at(lucky, 1.0, 0.995) is not None
    assert best_at(mean_frontier([lucky, unlucky]), 1.0, 0.995) is None


@pytest.mark.parametrize(
    ("draws", "message"),
    [
        ([], "at least one draw"),
        ([[at(0.0, 0.3, 1.0)], [at(0.1, 0.3, 1.0)]], "same margins"),
        ([[at(0.0, 0.3, 1.0)], [at(0.0, 0.3, 1.0, policy="ours")]], "one policy"),
    ],
)
def test_mean_frontier_refuses_draws_that_do_not_line_up(
    draws: list[list[FrontierPoint]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mean_frontier(draws)


def test_paired_interval_brackets_the_mean_and_is_repeatable() -> None:
    differences = [-1.2, 0.0, 0.1, -0.3, 0.4, -2.5, 0.0, 0.2, -0.1, 0.3]
    mean, low, high = paired_interval(differences)
    assert mean == pytest.approx(sum(differences) / len(differences))
    assert low < mean < high
    assert min(differences) <= low and high <= max(differences)
    assert paired_interval(differences) == (mean, low, high)
    narrower = paired_interval(differences, level=0.5)
    assert low < narrower[1] < narrower[2] < high


def test_paired_interval_of_equal_differences_has_no_width() -> None:
    assert paired_interval([0.25] * 6) == pytest.approx((0.25, 0.25, 0.25))


@pytest.mark.parametrize(("differences", "level"), [([], 0.95), ([0.1], 0.0), ([0.1], 1.0)])
def test_paired_interval_refuses_no_data_or_a_level_outside_0_1(
    differences: list[float], level: float
) -> None:
    with pytest.raises(ValueError, match="paired_interval"):
        paired_interval(differences, level=level)
