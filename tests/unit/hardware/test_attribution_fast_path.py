"""The hot-path attribution (``energy_shares``): the documented rule, bit for bit, on both paths."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from voltana.core.attribution import NUMPY_FROM_BATCH, attribute_energy, energy_shares, request_weight
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest


def _rule_by_hand(requests: list[ScheduledRequest], energy_j: float) -> list[float]:
    """The rule as the module docstring states it, one request at a time (the reference)."""
    weights = [request_weight(r.new_tokens, r.context_tokens) for r in requests]
    total = 0.0
    for weight in weights:
        total += weight
    if total <= 0.0:
        weights, total = [1.0] * len(requests), float(len(requests))
    quantum = math.ulp(energy_j)
    shares, assigned = [], 0.0
    for weight in weights[:-1]:
        share = math.trunc(energy_j * (weight / total) / quantum) * quantum
        shares.append(share)
        assigned += share
    return [*shares, energy_j - assigned]


batches = st.lists(
    st.tuples(st.integers(-2, 8192), st.integers(-2, 131072)), min_size=1, max_size=3 * NUMPY_FROM_BATCH
)
energies = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)


@given(batch=batches, energy_j=energies)
def test_shares_follow_the_rule_bit_for_bit_and_sum_exactly(
    batch: list[tuple[int, int]], energy_j: float
) -> None:
    requests = [ScheduledRequest(f"r{i}", new, context, 0.0) for i, (new, context) in enumerate(batch)]
    shares = energy_shares(requests, energy_j)
    assert shares == _rule_by_hand(requests, energy_j)
    assert sum(shares) == energy_j


def test_both_paths_cover_the_threshold_and_agree_on_decode_batches() -> None:
    for size in (1, NUMPY_FROM_BATCH - 1, NUMPY_FROM_BATCH, 4 * NUMPY_FROM_BATCH):
        requests = [ScheduledRequest(f"r{i}", 1, 500 + 37 * i, 0.0) for i in range(size)]
        assert energy_shares(requests, 3.7) == _rule_by_hand(requests, 3.7)
    all_idle = [ScheduledRequest(f"r{i}", 0, 0, 0.0) for i in range(NUMPY_FROM_BATCH)]
    idle_shares = energy_shares(all_idle, 2.0)  # no work anywhere: an equal split
    assert idle_shares == _rule_by_hand(all_idle, 2.0) and sum(idle_shares) == 2.0
    assert max(idle_shares) - min(idle_shares) < 1e-12
    assert energy_shares([], 1.0) == []


def test_attribute_energy_merges_a_request_listed_twice() -> None:
    requests = [ScheduledRequest("a", 10, 0, 0.0), ScheduledRequest("b", 10, 0, 0.0)]
    twice = BatchSnapshot.build(Phase.PREFILL, [*requests, requests[0]], 0.0)
    shares = attribute_energy(twice, 3.0)
    assert set(shares) == {"a", "b"} and sum(shares.values()) == 3.0
    assert shares["a"] == 2.0 * shares["b"]
