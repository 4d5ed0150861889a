"""Several policies over a rate sweep on the same workload, with the hindsight oracle when asked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from voltana.core.types import Slo
from voltana.sim.metrics import PolicyResult
from voltana.sim.oracle import hindsight_oracle
from voltana.sim.rates import rate_text, significant
from voltana.sim.runner import (
    ORACLE,
    PolicySpec,
    SimulationSetup,
    configured_policy,
    parse_policy,
    run_policy,
    with_savings,
)
from voltana.sim.workload import Workload

BASELINE = "static-max"
OVERLOAD_ATTAINMENT = 0.5
"""A rate is overloaded when static max (every clock at its highest) meets the SLO for fewer requests than
this share ("most requests miss"): no clock policy can be judged by its energy there."""


@dataclass(frozen=True)
class Overload:
    """How far static max misses at an overloaded rate (see :data:`OVERLOAD_ATTAINMENT`).

    ``ttft_p50_over_slo`` / ``itl_p50_over_slo``: static max's median TTFT (ITL) divided by the SLO's;
    ``completed_rps``: requests static max finished per second from the first arrival to the last completion,
    next to ``offered_rps``, the requests' own arrival rate (None for a single arrival).
    """

    slo_attainment: float
    ttft_attainment: float
    itl_attainment: float
    ttft_p50_over_slo: float
    itl_p50_over_slo: float
    completed_rps: float
    offered_rps: float | None

    def describe(self) -> str:
        """One line, e.g. ``overloaded: static-max meets the SLO for only 6.1% of requests (TTFT 6.1%, ITL
        100.0%); median TTFT 7.8x the SLO; 9.21 req/s completed of 26.3 arriving; savings not meaningful``."""
        excess = [
            f"median {what} {significant(ratio, 2)}x the SLO"
            for what, ratio in (("TTFT", self.ttft_p50_over_slo), ("ITL", self.itl_p50_over_slo))
            if ratio > 1
        ]
        arriving = "" if self.offered_rps is None else f" of {rate_text(self.offered_rps)} arriving"
        return "; ".join(
            [
                f"overloaded: {BASELINE} meets the SLO for only {self.slo_attainment:.1%} of requests "
                f"(TTFT {self.ttft_attainment:.1%}, ITL {self.itl_attainment:.1%})",
                *excess,
                f"{rate_text(self.completed_rps)} req/s completed{arriving}",
                "savings not meaningful here",
            ]
        )


def find_overload(results: Sequence[PolicyResult], slo: Slo, offered_rps: float | None) -> Overload | None:
    """The overload of a rate from its results, or None when static max meets the SLO for most requests
    (or did not run)."""
    base = next((r for r in results if r.policy == BASELINE), None)
    if base is None or base.slo_attainment >= OVERLOAD_ATTAINMENT:
        return None
    return Overload(
        slo_attainment=base.slo_attainment,
        ttft_attainment=base.ttft_attainment,
        itl_attainment=base.itl_attainment,
        ttft_p50_over_slo=base.ttft.p50_s / slo.ttft_s,
        itl_p50_over_slo=base.itl.p50_s / slo.itl_s,
        completed_rps=base.num_requests / base.span_s if base.span_s > 0 else float("nan"),
        offered_rps=offered_rps,
    )


@dataclass(frozen=True)
class SweepPoint:
    """All policies' results at one sweep rate (req/s), savings filled in vs static max.

    ``rate_rps`` is the rate asked for (a trace is rescaled so that its whole mean is this rate); the
    requests actually simulated are described by ``workload`` (name, with the trace's scale factor),
    ``num_requests``, ``arrival_span_s`` (first to last arrival, s) and :attr:`offered_rate_rps`: with
    ``--duration`` the kept window can be far from the whole trace's mean. ``overload``: set when static max
    itself misses the SLO for most requests (:func:`find_overload`).
    """

    rate_rps: float
    results: tuple[PolicyResult, ...]
    workload: str = ""
    num_requests: int = 0
    arrival_span_s: float = 0.0
    overload: Overload | None = None

    @property
    def offered_rate_rps(self) -> float | None:
        """The simulated requests' own mean rate, ``(n - 1) / arrival span`` (None for a single instant)."""
        if self.num_requests < 2 or self.arrival_span_s <= 0:
            return None
        return (self.num_requests - 1) / self.arrival_span_s


def plan_runs(policies: Sequence[str], oracle_stride: int, num_clocks: int) -> int:
    """How many simulations one rate costs (for progress bars)."""
    plain = [p for p in policies if p != ORACLE]
    runs = len(plain) + (BASELINE not in plain and ORACLE in policies)
    if ORACLE in policies:
        grid = len(range(0, num_clocks, oracle_stride)) + 1
        runs += 2 * grid + 2
    return runs


def run_sweep(
    setup: SimulationSetup,
    policies: Sequence[str],
    workload_at: Callable[[float], Workload],
    rates_rps: Sequence[float],
    prefill_route: str | None = None,
    timeline_policy: str | None = None,
    oracle_stride: int = 1,
    on_run: Callable[[str, float], None] | None = None,
) -> list[SweepPoint]:
    """Run every policy (``oracle`` last) at every rate; ``on_run(label, rate)`` after each simulation.
    ``prefill_route`` replaces the prefill route of every policy but the references
    (:func:`~voltana.sim.runner.configured_policy`)."""
    specs: list[PolicySpec] = [configured_policy(p, prefill_route) for p in policies if p != ORACLE]
    points: list[SweepPoint] = []
    for rate in rates_rps:
        workload = workload_at(rate)
        results: list[PolicyResult] = []
        for spec in specs:
            result = run_policy(setup, spec, workload, rate, record_timeline=spec.name == timeline_policy)
            results.append(result)
            if on_run is not None:
                on_run(spec.name, rate)
        if ORACLE in policies:
            reference = next((r for r in results if r.policy == BASELINE), None)
            if reference is None:
                reference = run_policy(
                    setup, parse_policy(BASELINE), workload, rate, record_timeline=timeline_policy == BASELINE
                )
                if on_run is not None:
                    on_run(BASELINE, rate)
            choice = hindsight_oracle(
                setup,
                workload,
                reference,
                rate,
                stride=oracle_stride,
                progress=(lambda: on_run(ORACLE, rate)) if on_run is not None else None,  # noqa: B023
            )
            results.append(choice.result)
            if all(r.policy != BASELINE for r in results):
                results.insert(0, reference)
        points.append(sweep_point(setup, rate, results, workload))
    return points


def sweep_point(
    setup: SimulationSetup, rate_rps: float, results: Sequence[PolicyResult], workload: Workload
) -> SweepPoint:
    """One rate's point: the results with savings against static max, the window that ran, the overload
    flag. Shared by the serial sweep and the Ray runner so both report the same."""
    point = SweepPoint(
        rate_rps, tuple(with_savings(results, BASELINE)), workload.name, len(workload), workload.duration_s
    )
    return replace(point, overload=find_overload(results, setup.slo, point.offered_rate_rps))
