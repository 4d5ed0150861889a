"""Saving-vs-attainment frontiers: comparing clock policies so that trading SLO for joules cannot win.

A policy's ``safety_margin`` trades energy against SLO attainment. Comparing two policies at one margin each
rewards the one that happens to sit lower on that trade. Instead every policy runs at several margins (the
paper policy shrinks its SLOs by the same ``policy.safety_margin``) and gives a set of points (attainment,
saving vs static max); policies are compared at equal attainment: the best saving among the points reaching
a floor. The floor used for the verdicts is static max's TTFT and ITL attainment each minus a tolerance
(0.5 points by default): what "SLO-safe" means here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from voltana.sim.metrics import PolicyResult
from voltana.sim.runner import SimulationSetup, parse_policy, run_policy
from voltana.sim.workload import Workload

DEFAULT_MARGINS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
ATTAINMENT_TOLERANCE = 0.005
"""Attainment within 0.5 points of static max's counts as equal (the issue's bar)."""


@dataclass(frozen=True)
class FrontierPoint:
    """One policy at one safety margin: saving vs static max (fraction) and its attainments (fractions)."""

    policy: str
    margin: float
    saving: float
    slo_attainment: float
    ttft_attainment: float
    itl_attainment: float
    energy_j: float

    @classmethod
    def of(cls, policy: str, margin: float, result: PolicyResult, static_max_j: float) -> FrontierPoint:
        """The point of ``result`` (run at ``margin``) against static max's energy (J)."""
        return cls(
            policy,
            margin,
            1.0 - result.energy_j / static_max_j,
            result.slo_attainment,
            result.ttft_attainment,
            result.itl_attainment,
            result.energy_j,
        )

    def reaches(self, ttft_floor: float, itl_floor: float) -> bool:
        """True when both TTFT and ITL attainment are at least the floors (fractions)."""
        return self.ttft_attainment + 1e-12 >= ttft_floor and self.itl_attainment + 1e-12 >= itl_floor


def with_margin(setup: SimulationSetup, margin: float) -> SimulationSetup:
    """``setup`` with ``policy.safety_margin`` = ``margin`` (EcoFreq and the paper policy both read it)."""
    config = setup.config
    policy = config.policy.model_copy(update={"safety_margin": margin})
    return SimulationSetup(
        setup.cluster, config.model_copy(update={"policy": policy}), setup.hook, setup.seed
    )


def margin_sweep(
    setup: SimulationSetup,
    policy: str,
    workload: Workload,
    static_max_j: float,
    margins: Sequence[float] = DEFAULT_MARGINS,
    run: Callable[[SimulationSetup, str, Workload], PolicyResult] | None = None,
) -> list[FrontierPoint]:
    """``policy`` at every margin: its frontier points (``run`` defaults to the plain runner)."""

    def plain(s: SimulationSetup, p: str, w: Workload) -> PolicyResult:
        return run_policy(s, parse_policy(p), w)

    runner = run or plain
    return [
        FrontierPoint.of(policy, m, runner(with_margin(setup, m), policy, workload), static_max_j)
        for m in margins
    ]


def pareto(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """The points no other point beats on both SLO attainment and saving, by ascending attainment."""
    kept = [
        p
        for p in points
        if not any(
            q.slo_attainment >= p.slo_attainment
            and q.saving >= p.saving
            and (q.slo_attainment > p.slo_attainment or q.saving > p.saving)
            for q in points
        )
    ]
    return sorted(kept, key=lambda p: (p.slo_attainment, p.saving))


def best_at(points: Sequence[FrontierPoint], ttft_floor: float, itl_floor: float) -> FrontierPoint | None:
    """The point with the largest saving among those reaching both floors, or None if none does."""
    eligible = [p for p in points if p.reaches(ttft_floor, itl_floor)]
    return max(eligible, key=lambda p: p.saving, default=None)


@dataclass(frozen=True)
class EqualAttainment:
    """Two policies at the SLO-safe floor: each one's best point there (None: it never reaches the floor)."""

    ttft_floor: float
    itl_floor: float
    ours: FrontierPoint | None
    theirs: FrontierPoint | None

    @property
    def ours_wins(self) -> bool:
        """True when ours reaches the floor and saves at least as much as theirs there (if theirs reaches)."""
        if self.ours is None:
            return False
        return self.theirs is None or self.ours.saving >= self.theirs.saving - 1e-12


def compare_at_floor(
    ours: Sequence[FrontierPoint],
    theirs: Sequence[FrontierPoint],
    static_max: PolicyResult,
    tolerance: float = ATTAINMENT_TOLERANCE,
) -> EqualAttainment:
    """Ours vs theirs at static max's TTFT and ITL attainment minus ``tolerance`` (see module docstring)."""
    ttft_floor = static_max.ttft_attainment - tolerance
    itl_floor = static_max.itl_attainment - tolerance
    return EqualAttainment(
        ttft_floor, itl_floor, best_at(ours, ttft_floor, itl_floor), best_at(theirs, ttft_floor, itl_floor)
    )


def mean_frontier(draws: Sequence[Sequence[FrontierPoint]]) -> list[FrontierPoint]:
    """One policy's frontier over several arrival draws (seeds): per margin, the mean saving, attainments and
    energy over the draws, by ascending margin.

    At the edge of capacity one draw's attainment is partly chance (the decode backlog's random walk), so a
    margin is judged by what it gives on average: an operator picks a margin, not a draw. Every draw must hold
    the same policy and margins; raises ``ValueError`` otherwise or when ``draws`` is empty."""
    if not draws:
        raise ValueError("mean_frontier needs at least one draw")
    by_margin: dict[float, list[FrontierPoint]] = {}
    for draw in draws:
        for point in draw:
            by_margin.setdefault(point.margin, []).append(point)
    policies = {p.policy for draw in draws for p in draw}
    if len(policies) != 1 or any(len(points) != len(draws) for points in by_margin.values()):
        raise ValueError("mean_frontier: every draw must hold one policy at the same margins")
    (policy,) = policies
    n = len(draws)
    return [
        FrontierPoint(
            policy,
            margin,
            sum(p.saving for p in points) / n,
            sum(p.slo_attainment for p in points) / n,
            sum(p.ttft_attainment for p in points) / n,
            sum(p.itl_attainment for p in points) / n,
            sum(p.energy_j for p in points) / n,
        )
        for margin, points in sorted(by_margin.items())
    ]


BOOTSTRAP_RESAMPLES = 10_000
"""Resamples of :func:`paired_interval`; its percentiles move by well under 0.1 point between seeds of the
resampling at this count for the sample sizes used here (10-20 draws)."""


def paired_interval(
    differences: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-draw paired differences (e.g. ours minus static max on the same requests) and its
    ``level`` percentile-bootstrap interval: ``(mean, low, high)`` in the differences' unit.

    The percentile bootstrap (Efron and Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13) makes no
    normality assumption, which matters here: near the edge a draw either keeps the backlog bounded or not,
    so the differences are far from normal. Deterministic for a given ``seed``. Raises ``ValueError`` for no
    differences or a ``level`` outside (0, 1)."""
    if not differences:
        raise ValueError("paired_interval needs at least one difference")
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_interval: level must be in (0, 1), got {level}")
    values = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)
