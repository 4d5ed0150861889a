"""Summaries of a simulation: energy, latency percentiles, SLO attainment and clock residency.

Definitions (also in docs/guides/simulate.md):
- TTFT of a request: from its arrival until its prefill ends (the first token is produced by prefill).
- ITL of a request: its mean inter-token gap, ``(finish - first token) / (output_tokens - 1)`` (often called
  TPOT); the gap before the first decoded token includes the KV transfer and decode admission wait.
  Requests with a single output token have no ITL and meet the ITL objective trivially.
- ITL percentiles (the tables' ITL column, JSON ``itl``) are over the requests' mean ITLs, the quantity the
  ITL objective is checked on, for the requests with more than one output token.
- Admission wait of a request: from its KV cache's arrival at a decode instance until it joins the running
  batch (the engine's running-request cap or KV cache was full). It is part of the request's mean ITL (a
  user sees it as a stall before the second token); ``decode_itl`` is the mean ITL without it, so a backlog
  shows as admission wait, not as slow iterations.
- Requests the engine refuses (longer than its ``max_model_len``, or more KV than a decode instance has) are
  counted in ``rejected_over_context`` / ``rejected_over_kv`` and left out of every other number; the same
  requests are refused under every policy (the limits do not depend on clocks or routing).
- SLO attainment: the share of requests whose TTFT <= SLO TTFT **and** ITL <= SLO ITL.
- Energy: all instances (all their GPUs) from the first arrival to the last completion, idle time at idle
  power; J/token is per output token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voltana.core.types import Phase, Slo
from voltana.sim.cluster import ClusterOutcome


@dataclass(frozen=True)
class LatencySummary:
    """p50/p90/p99 of one latency (s)."""

    p50_s: float
    p90_s: float
    p99_s: float


@dataclass(frozen=True)
class PolicyResult:
    """One policy on one workload: the numbers of one table row."""

    policy: str
    rate_rps: float
    num_requests: int
    output_tokens: int
    span_s: float
    energy_j: float
    prefill_energy_j: float
    decode_energy_j: float
    joules_per_token: float
    ttft: LatencySummary
    itl: LatencySummary
    """Per-request mean ITL (s), the KV transfer and admission wait included (what the ITL SLO is checked
    on), over the requests with more than one output token."""
    slo_attainment: float
    ttft_attainment: float
    itl_attainment: float
    clock_residency: dict[str, dict[int, float]]
    iterations: int
    admission_wait: LatencySummary = LatencySummary(0.0, 0.0, 0.0)
    """Per-request decode admission wait (s), over the requests that reached decode."""
    admission_wait_mean_s: float = 0.0
    decode_itl: LatencySummary = LatencySummary(0.0, 0.0, 0.0)
    """Per-request mean ITL without the admission wait (s)."""
    rejected_over_context: int = 0
    rejected_over_kv: int = 0
    saving_vs_static_max: float | None = None
    timeline: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (clock keys become strings, the timeline is left out)."""
        data = asdict(self)
        data.pop("timeline")
        data["clock_residency"] = {
            phase: {str(k): v for k, v in shares.items()} for phase, shares in self.clock_residency.items()
        }
        return data


def _summary(values: Sequence[float] | np.ndarray) -> LatencySummary:
    if len(values) == 0:
        return LatencySummary(float("nan"), float("nan"), float("nan"))
    p50, p90, p99 = (float(x) for x in np.percentile(np.asarray(values), [50, 90, 99]))
    return LatencySummary(p50, p90, p99)


def request_latencies(outcome: ClusterOutcome) -> tuple[np.ndarray, np.ndarray]:
    """Per-request TTFT and mean ITL (s); ITL is 0 for single-token outputs (they meet the ITL objective)."""
    reqs = outcome.requests
    ttft = np.fromiter((r.first_token_s - r.arrival_s for r in reqs), np.float64, len(reqs))
    itl = np.fromiter(
        (
            (r.finish_s - r.first_token_s) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
            for r in reqs
        ),
        np.float64,
        len(reqs),
    )
    return ttft, itl


def admission_waits(outcome: ClusterOutcome) -> tuple[np.ndarray, np.ndarray]:
    """Per-request decode admission wait and mean ITL without it (s), for requests with > 1 output token."""
    decoded = [r for r in outcome.requests if r.output_tokens > 1]
    wait = np.fromiter((r.admission_wait_s for r in decoded), np.float64, len(decoded))
    itl = np.fromiter(
        ((r.finish_s - r.first_token_s - r.admission_wait_s) / (r.output_tokens - 1) for r in decoded),
        np.float64,
        len(decoded),
    )
    return wait, itl


def summarize(policy: str, rate_rps: float, outcome: ClusterOutcome, slo: Slo) -> PolicyResult:
    """The table row of one run (``saving_vs_static_max`` is filled in by the caller with the baseline)."""
    ttft, itl = request_latencies(outcome)
    decoded = np.fromiter((r.output_tokens > 1 for r in outcome.requests), np.bool_, len(outcome.requests))
    meets_ttft = ttft <= slo.ttft_s + 1e-12
    meets_itl = itl <= slo.itl_s + 1e-12
    energy = {Phase.PREFILL: 0.0, Phase.DECODE: 0.0}
    busy_by_clock: dict[str, dict[int, float]] = {Phase.PREFILL.value: {}, Phase.DECODE.value: {}}
    timeline: dict[str, list[tuple[float, int]]] = {}
    iterations = 0
    for stats in outcome.instances:
        idle_s = max(0.0, outcome.span_s - stats.busy_s)
        energy[stats.phase] += stats.busy_energy_j + outcome.idle_power_w * idle_s
        iterations += stats.iterations
        residency = busy_by_clock[stats.phase.value]
        for clock, seconds in stats.clock_busy_s.items():
            residency[clock] = residency.get(clock, 0.0) + seconds
        timeline[stats.instance_id] = stats.timeline
    shares = {
        phase: {clock: seconds / total for clock, seconds in sorted(by_clock.items())}
        for phase, by_clock in busy_by_clock.items()
        if (total := sum(by_clock.values())) > 0
    }
    output_tokens = int(sum(r.output_tokens for r in outcome.requests))
    wait, decode_itl = admission_waits(outcome)
    total_j = energy[Phase.PREFILL] + energy[Phase.DECODE]
    return PolicyResult(
        policy=policy,
        rate_rps=rate_rps,
        num_requests=len(outcome.requests),
        output_tokens=output_tokens,
        span_s=outcome.span_s,
        energy_j=total_j,
        prefill_energy_j=energy[Phase.PREFILL],
        decode_energy_j=energy[Phase.DECODE],
        joules_per_token=total_j / max(1, output_tokens),
        ttft=_summary(ttft),
        itl=_summary(itl[decoded]),
        slo_attainment=float(np.mean(meets_ttft & meets_itl)),
        ttft_attainment=float(np.mean(meets_ttft)),
        itl_attainment=float(np.mean(meets_itl)),
        clock_residency=shares,
        iterations=iterations,
        admission_wait=_summary(wait) if len(wait) else LatencySummary(0.0, 0.0, 0.0),
        admission_wait_mean_s=float(wait.mean()) if len(wait) else 0.0,
        decode_itl=_summary(decode_itl) if len(decode_itl) else LatencySummary(0.0, 0.0, 0.0),
        rejected_over_context=len(outcome.rejected_over_context),
        rejected_over_kv=len(outcome.rejected_over_kv),
        # Recorded: every instance, also one that never ran (an empty list); not recorded: none.
        timeline=timeline if any(timeline.values()) else {},
    )
