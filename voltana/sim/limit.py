"""The least-energy limit of a run: every iteration at its own least-energy clock, no SLO, same batches.

A run's energy is ``sum over iterations of (E_i - P_idle * t_i) + P_idle * span * instances``: each instance
draws its idle power over the whole span and each iteration adds what it draws above idle. Keeping the
iterations (batch shapes) and the span of a run and re-pricing every iteration at the allowed clock where its
energy above idle is least gives what no clock policy could beat on those batches. It ignores the SLOs and
that slower iterations would change later batches: a reference, not a schedule.

Batches differ between policies (routing, and bigger batches at lower clocks), so a limit bounds only its own
run. The common reference of a comparison is the least of its runs' limits (below every run's own limit), and
policies are scored by the share of the gap between static max and it that they close:
``(E_static_max - E_policy) / (E_static_max - E_limit)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voltana.core.types import IterationRecord, Phase
from voltana.sim.metrics import PolicyResult
from voltana.sim.runner import PolicySpec, SimulationSetup, allowed_clocks_mhz, run_policy
from voltana.sim.workload import Workload


class RecordingHook:
    """The plugin hook relay of a run, also keeping every finished iteration (``records``)."""

    def __init__(self, hook: Any) -> None:
        self._hook = hook
        self.records: list[IterationRecord] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)

    def voltana_iteration_finished(self, record: IterationRecord) -> Any:
        """Keep ``record``, then pass it to the observers as the real hook would."""
        self.records.append(record)
        return self._hook.voltana_iteration_finished(record=record)


@dataclass(frozen=True)
class LimitedRun:
    """A policy's result with the limit on its own batches (J) and the energy re-priced at the clocks it ran
    (``repriced_j``, equal to ``result.energy_j`` up to rounding: a check of the bookkeeping)."""

    result: PolicyResult
    limit_j: float
    repriced_j: float


def iteration_costs(model: Any, record: IterationRecord, clocks_mhz: tuple[int, ...]) -> list[Any]:
    """The simulated cost of the iteration in ``record`` at every clock (``IterationCost`` list)."""
    snapshot = record.snapshot
    batch = len(snapshot.requests)
    if snapshot.phase is Phase.DECODE:
        args = (batch, batch, snapshot.num_context_tokens)
    else:
        args = (batch, snapshot.num_new_tokens, snapshot.num_context_tokens)
    return [model.cost(snapshot.phase, *args, clock) for clock in clocks_mhz]


def least_energy_j(
    model: Any, records: list[IterationRecord], clocks_mhz: tuple[int, ...], span_s: float, instances: int
) -> tuple[float, float]:
    """(limit, re-priced at the applied clocks) energy of ``records`` over ``span_s`` on ``instances`` (J)."""
    idle_w = float(model.idle_power_w())
    limit = repriced = idle_w * span_s * instances
    for record in records:
        costs = iteration_costs(model, record, clocks_mhz)
        limit += min(c.energy_j - idle_w * c.latency_s for c in costs)
        applied = model.cost(
            record.snapshot.phase,
            len(record.snapshot.requests),
            record.snapshot.num_new_tokens,
            record.snapshot.num_context_tokens,
            record.applied_clock_mhz,
        )
        repriced += applied.energy_j - idle_w * applied.latency_s
    return limit, repriced


def run_with_limit(
    setup: SimulationSetup, spec: PolicySpec, workload: Workload, rate_rps: float | None = None
) -> LimitedRun:
    """Run ``spec`` and price the least-energy limit of its own batches (allowed clocks of ``setup``)."""
    recorder = RecordingHook(setup.hook)
    recorded = SimulationSetup(setup.cluster, setup.config, recorder, setup.seed)
    result = run_policy(recorded, spec, workload, rate_rps)
    model = setup.cluster.model
    clocks = allowed_clocks_mhz(setup.config, model)
    instances = setup.cluster.num_prefill + setup.cluster.num_decode
    limit, repriced = least_energy_j(model, recorder.records, clocks, result.span_s, instances)
    return LimitedRun(result, limit, repriced)


def gap_closed(static_max_j: float, policy_j: float, limit_j: float) -> float:
    """Share of the static-max-to-limit energy gap a policy closes (1: at the limit; negative: above max)."""
    gap = static_max_j - limit_j
    return (static_max_j - policy_j) / gap if gap > 0 else 0.0
