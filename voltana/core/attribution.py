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
from collections.abc import Sequence

import numpy as np

from voltana.core.types import BatchSnapshot, ScheduledRequest

ATTENTION_WEIGHT = 1.0
CONTEXT_SCALE = 4096.0  # context tokens that cost about as much as one new token's linear layers
NUMPY_FROM_BATCH = 48  # batch size from which array arithmetic beats the interpreter loop (measured)


def request_weight(new_tokens: int, context_tokens: int) -> float:
    """Relative work of one request in an iteration (dimensionless, > 0 when it computes any token)."""
    new = max(0, new_tokens)
    context = max(0, context_tokens)
    return new * (1.0 + ATTENTION_WEIGHT * (context + new / 2.0) / CONTEXT_SCALE)


def energy_shares(requests: Sequence[ScheduledRequest], energy_j: float) -> list[float]:
    """Joules of each entry of ``requests`` (same order): the rule above, summing to ``energy_j`` exactly.

    The per-iteration hot path. Weights are :func:`request_weight` evaluated in the same operation order
    (plain floats for small batches, numpy arrays from :data:`NUMPY_FROM_BATCH` requests on, where the
    interpreter loop dominates), and the total is a left-to-right sum, so both give the same bits.
    An empty batch gives ``[]``.
    """
    count = len(requests)
    if count == 0:
        return []
    if count >= NUMPY_FROM_BATCH:
        return _shares_numpy(requests, energy_j)
    attention, scale = ATTENTION_WEIGHT, CONTEXT_SCALE
    weights = []
    for request in requests:
        new, context = request.new_tokens, request.context_tokens
        new = new if new > 0 else 0
        weights.append(new * (1.0 + attention * ((context if context > 0 else 0) + new / 2.0) / scale))
    total = sum(weights)
    if total <= 0.0:
        weights = [1.0] * count
        total = float(count)
    # Exactness: every share but the last is truncated to a multiple of ulp(energy_j), so every partial sum of
    # them is an exact multiple of that ulp no larger than energy_j (in any summation order), and the
    # remainder taken by the last request is exact.
    quantum = math.ulp(energy_j)
    trunc = math.trunc
    shares = [trunc(energy_j * (weight / total) / quantum) * quantum for weight in weights]
    shares[-1] = energy_j - sum(shares[:-1])
    return shares


def _shares_numpy(requests: Sequence[ScheduledRequest], energy_j: float) -> list[float]:
    """:func:`energy_shares` on arrays: elementwise IEEE operations in the same order, sequential total."""
    count = len(requests)
    new = np.fromiter([r.new_tokens for r in requests], np.float64, count)
    context = np.fromiter([r.context_tokens for r in requests], np.float64, count)
    np.maximum(new, 0.0, out=new)
    np.maximum(context, 0.0, out=context)
    weights = new * (1.0 + ATTENTION_WEIGHT * (context + new / 2.0) / CONTEXT_SCALE)
    total = float(np.add.accumulate(weights)[-1])  # left to right, like sum() of floats
    if total <= 0.0:
        weights = np.ones(count)
        total = float(count)
    quantum = math.ulp(energy_j)
    shares: list[float] = (np.trunc(energy_j * (weights / total) / quantum) * quantum).tolist()
    shares[-1] = energy_j - sum(shares[:-1])
    return shares


def attribute_energy(snapshot: BatchSnapshot, energy_j: float) -> dict[str, float]:
    """Joules per ``request_id`` of ``snapshot``'s batch; the values sum to ``energy_j`` exactly."""
    requests = snapshot.requests
    shares: dict[str, float] = {}
    for request, share in zip(requests, energy_shares(requests, energy_j), strict=True):
        shares[request.request_id] = shares.get(request.request_id, 0.0) + share
    return shares
