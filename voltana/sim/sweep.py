"""Several policies over a rate sweep on the same workload, with the hindsight oracle when asked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from voltana.sim.metrics import PolicyResult
from voltana.sim.oracle import hindsight_oracle
from voltana.sim.runner import ORACLE, PolicySpec, SimulationSetup, parse_policy, run_policy, with_savings
from voltana.sim.workload import Workload

BASELINE = "static-max"


@dataclass(frozen=True)
class SweepPoint:
    """All policies' results at one sweep rate (req/s), savings filled in vs static max.

    ``rate_rps`` is the rate asked for (a trace is rescaled so that its whole mean is this rate); the
    requests actually simulated are described by ``workload`` (name, with the trace's scale factor),
    ``num_requests``, ``arrival_span_s`` (first to last arrival, s) and :attr:`offered_rate_rps`: with
    ``--duration`` the kept window can be far from the whole trace's mean.
    """

    rate_rps: float
    results: tuple[PolicyResult, ...]
    workload: str = ""
    num_requests: int = 0
    arrival_span_s: float = 0.0

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
    """Run every policy (``oracle`` last) at every rate; ``on_run(label, rate)`` after each simulation."""
    specs: list[PolicySpec] = [parse_policy(p, prefill_route) for p in policies if p != ORACLE]
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
                reference = run_policy(setup, parse_policy(BASELINE), workload, rate)
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
        points.append(
            SweepPoint(
                rate,
                tuple(with_savings(results, BASELINE)),
                workload.name,
                len(workload),
                workload.duration_s,
            )
        )
    return points
