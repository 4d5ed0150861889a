"""SLO attainment and latency summaries on hand-built outcomes (definitions: docs/guides/simulate.md)."""

from __future__ import annotations

import pytest

from voltana.core.types import Phase, Slo
from voltana.sim.cluster import ClusterOutcome, InstanceStats, SimRequest
from voltana.sim.metrics import summarize


def finished(arrival_s: float, first_s: float, finish_s: float, output_tokens: int) -> SimRequest:
    request = SimRequest("r", arrival_s, 100, output_tokens)
    request.first_token_s = first_s
    request.finish_s = finish_s
    return request


def outcome(requests: list[SimRequest], instances: list[InstanceStats] | None = None) -> ClusterOutcome:
    return ClusterOutcome(requests, instances or [], max(r.finish_s for r in requests), 50.0)


def test_attainment_needs_both_ttft_and_mean_itl() -> None:
    slo = Slo(ttft_s=0.5, itl_s=0.05)
    requests = [
        finished(0.0, 0.4, 0.4 + 0.04 * 10, 11),  # meets both
        finished(0.0, 0.6, 0.6 + 0.04 * 10, 11),  # TTFT miss
        finished(0.0, 0.4, 0.4 + 0.06 * 10, 11),  # mean ITL miss
        finished(0.0, 0.3, 0.3, 1),  # single token: no ITL, meets
    ]
    result = summarize("p", 1.0, outcome(requests), slo)
    assert result.slo_attainment == pytest.approx(0.5)
    assert result.ttft_attainment == pytest.approx(0.75)
    assert result.itl_attainment == pytest.approx(0.75)


def test_itl_percentiles_are_over_the_requests_mean_itl() -> None:
    """The table's ITL p50/p90/p99 summarize what the ITL SLO is checked on: each request's mean ITL (its
    admission wait included), not the decode iterations' gaps."""
    slo = Slo(ttft_s=0.5, itl_s=0.05)
    requests = [
        finished(0.0, 0.4, 0.4 + 0.04 * 10, 11),
        finished(0.0, 0.4, 0.4 + 0.06 * 10, 11),  # e.g. a long wait for decode admission
        finished(0.0, 0.3, 0.3, 1),  # single token: no ITL, not counted
    ]
    result = summarize("p", 1.0, outcome(requests), slo)
    assert result.itl.p50_s == pytest.approx(0.05)
    assert result.itl.p99_s == pytest.approx(0.0598)
    # The median request misses the SLO exactly when the median mean ITL is above it.
    assert result.itl_attainment == pytest.approx(2 / 3)


def test_energy_adds_idle_power_over_the_span() -> None:
    stats = InstanceStats(
        "p0", Phase.PREFILL, busy_s=2.0, busy_energy_j=600.0, clock_busy_s={1005: 1.5, 1410: 0.5}
    )
    result = summarize("p", 1.0, outcome([finished(0.0, 1.0, 10.0, 5)], [stats]), Slo(1, 1))
    assert result.energy_j == pytest.approx(600.0 + 50.0 * 8.0)
    assert result.prefill_energy_j == result.energy_j and result.decode_energy_j == 0.0
    assert result.joules_per_token == pytest.approx(result.energy_j / 5)
    assert result.clock_residency == {"prefill": {1005: 0.75, 1410: 0.25}}
