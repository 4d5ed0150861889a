"""Splitting one iteration's measured energy over the requests in its batch (engine- and vendor-neutral).

Rule: a request's share is proportional to the work it brings to the iteration, counted in token-pairs of
attention plus its linear-layer tokens: ``weight = new_tokens * (1 + ATTENTION_WEIGHT * (context_tokens +
new_tokens / 2) / CONTEXT_SCALE)``. With no context this is simply the share of new tokens (prefill chunks by
prompt length, decode steps equally); long contexts add the KV traffic they cause. The shares sum exactly to
the iteration's energy (``sum(result.values()) == energy_j``; the last request takes the rounding
remainder). An empty batch attributes nothing.
"""

from __future__ import annotations

import math

from voltana.core.types import BatchSnapshot

ATTENTION_WEIGHT = 1.0
CONTEXT_SCALE = 4096.0  # context tokens that cost about as much as one new token's linear layers


def request_weight(new_tokens: int, context_tokens: int) -> float:
    """Relative work of one request in an iteration (dimensionless, > 0 when it computes any token)."""
    new = max(0, new_tokens)
    context = max(0, context_tokens)
    return new * (1.0 + ATTENTION_WEIGHT * (context + new / 2.0) / CONTEXT_SCALE)


def attribute_energy(snapshot: BatchSnapshot, energy_j: float) -> dict[str, float]:
    """Joules per ``request_id`` of ``snapshot``'s batch; the values sum to ``energy_j`` exactly."""
    requests = snapshot.requests
    if not requests:
        return {}
    weights = [request_weight(r.new_tokens, r.context_tokens) for r in requests]
    total = sum(weights)
    if total <= 0.0:
        weights = [1.0] * len(requests)
        total = float(len(requests))
    # Exactness: every share but the last is truncated to a multiple of ulp(energy_j), so every partial sum is
    # an exact multiple of that ulp no larger than energy_j, and the remainder energy_j - assigned is exact.
    quantum = math.ulp(energy_j)
    shares: dict[str, float] = {}
    assigned = 0.0
    for request, weight in zip(requests[:-1], weights[:-1], strict=True):
        share = math.trunc(energy_j * (weight / total) / quantum) * quantum
        shares[request.request_id] = shares.get(request.request_id, 0.0) + share
        assigned += share
    last = requests[-1].request_id
    shares[last] = shares.get(last, 0.0) + (energy_j - assigned)
    return shares
