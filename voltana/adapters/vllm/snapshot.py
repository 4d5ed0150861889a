"""vLLM scheduler output -> :class:`BatchSnapshot` (the only place that reads vLLM's batch structures).

Read right after ``Scheduler.schedule()`` returns, before the forward is dispatched:

* scheduled requests come from the ``SchedulerOutput`` itself: ``scheduled_new_reqs`` (first time on this
  instance) and ``scheduled_cached_reqs`` (continuing), with ``num_scheduled_tokens[req_id]`` as the tokens
  to compute and the output's ``num_computed_tokens`` (the value *before* this step: cached prefix, earlier
  chunks, generated tokens, or KV loaded from a P/D connector) as context tokens;
* arrival times and prompt lengths come from the scheduler's ``Request`` objects (``time.time()`` epoch);
* the waiting queue is the scheduler's ``waiting`` (+ ``kv_holding_waiting``) after this step took its
  requests: what still queues behind this batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from voltana.core.types import BatchSnapshot, Phase, QueuedRequest, ScheduledRequest

MAX_WAITING_IN_SNAPSHOT = 256
"""Longest waiting queue copied into a snapshot (oldest first), bounding the hot path's cost."""

QUEUED_ATTR = "_voltana_queued"
"""Attribute of a vLLM ``Request`` holding its last ``QueuedRequest`` (reused while unchanged)."""


def scheduled_tokens(scheduler_output: Any) -> Iterator[tuple[str, int, int]]:
    """(request id, tokens to compute, tokens computed before) of every request of a ``SchedulerOutput``:
    new ones first, then continuing ones, in vLLM's order. Plain tuples: this runs per request per step."""
    counts: Mapping[str, int] = scheduler_output.num_scheduled_tokens
    for new in scheduler_output.scheduled_new_reqs:
        yield new.req_id, counts.get(new.req_id, 0), new.num_computed_tokens
    cached = scheduler_output.scheduled_cached_reqs
    for req_id, computed in zip(cached.req_ids, cached.num_computed_tokens, strict=True):
        yield req_id, counts.get(req_id, 0), computed


def waiting_queue(scheduler: Any, limit: int = MAX_WAITING_IN_SNAPSHOT) -> tuple[QueuedRequest, ...]:
    """Requests still waiting after this step (up to ``limit``): prompt tokens left and arrival time.

    Each ``QueuedRequest`` is kept on its vLLM ``Request`` and reused while its numbers stay the same: the
    queue changes little between steps, and building frozen dataclasses is what costs here.
    """
    queued: list[QueuedRequest] = []
    for queue in (getattr(scheduler, "kv_holding_waiting", ()), scheduler.waiting):
        for request in queue:
            if len(queued) >= limit:
                return tuple(queued)
            left = max(0, request.num_tokens - request.num_computed_tokens)
            attributes = getattr(request, "__dict__", None)
            cached = attributes.get(QUEUED_ATTR) if attributes is not None else None
            if cached is None or cached.prompt_tokens != left or cached.request_id != request.request_id:
                cached = QueuedRequest(request.request_id, left, request.arrival_time)
                if attributes is not None:
                    attributes[QUEUED_ATTR] = cached
            queued.append(cached)
    return tuple(queued)


def build_snapshot(
    scheduler: Any,
    scheduler_output: Any,
    role: Phase | None,
    now_s: float,
    iteration: int,
    instance_id: str,
) -> BatchSnapshot:
    """The snapshot of the step vLLM just scheduled (the module docstring says where each field is from)."""
    requests: Mapping[str, Any] = scheduler.requests
    scheduled: list[ScheduledRequest] = []
    append = scheduled.append
    computes_prompt = False  # a mixed instance's step is PREFILL if any request still computes prompt tokens
    for req_id, tokens, computed_before in scheduled_tokens(scheduler_output):
        request = requests.get(req_id)
        if request is None:
            arrival_s = now_s
        else:
            arrival_s = request.arrival_time
            if role is None and computed_before < request.num_prompt_tokens:
                computes_prompt = True  # its latency delays a first token
        append(ScheduledRequest(req_id, tokens, computed_before, arrival_s))
    phase = role if role is not None else Phase.PREFILL if computes_prompt else Phase.DECODE
    return BatchSnapshot.build(
        phase=phase,
        requests=scheduled,
        now_s=now_s,
        waiting=waiting_queue(scheduler),
        iteration=iteration,
        instance_id=instance_id,
    )


def first_token_request_ids(scheduler: Any, scheduler_output: Any) -> list[str]:
    """Requests whose prompt is complete after this step and that have no output yet: their first token
    is sampled by this iteration (read after ``schedule()`` advanced ``num_computed_tokens``)."""
    requests: Mapping[str, Any] = scheduler.requests
    found = []
    for req_id in scheduler_output.num_scheduled_tokens:
        request = requests.get(req_id)
        if (
            request is not None
            and request.num_output_tokens == 0
            and request.num_computed_tokens >= request.num_prompt_tokens
        ):
            found.append(req_id)
    return found
