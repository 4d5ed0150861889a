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

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from voltana.core.types import BatchSnapshot, Phase, QueuedRequest, ScheduledRequest

MAX_WAITING_IN_SNAPSHOT = 256
"""Longest waiting queue copied into a snapshot (oldest first), bounding the hot path's cost."""


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    """One request's share of a step, straight from the scheduler output."""

    request_id: str
    num_tokens: int
    num_computed_before: int
    is_new: bool


def scheduled_steps(scheduler_output: Any) -> Iterator[ScheduledStep]:
    """Every request of a ``SchedulerOutput``: new ones first, then continuing ones, in vLLM's order."""
    counts: Mapping[str, int] = scheduler_output.num_scheduled_tokens
    for new in scheduler_output.scheduled_new_reqs:
        yield ScheduledStep(new.req_id, counts.get(new.req_id, 0), new.num_computed_tokens, True)
    cached = scheduler_output.scheduled_cached_reqs
    for req_id, computed in zip(cached.req_ids, cached.num_computed_tokens, strict=True):
        yield ScheduledStep(req_id, counts.get(req_id, 0), computed, False)


def batch_phase(role: Phase | None, steps: Iterable[ScheduledStep], requests: Mapping[str, Any]) -> Phase:
    """The phase of one iteration: the instance's role, or for a mixed instance PREFILL if any request still
    computes prompt tokens this step (its latency delays a first token) and DECODE otherwise."""
    if role is not None:
        return role
    for step in steps:
        request = requests.get(step.request_id)
        if request is not None and step.num_computed_before < request.num_prompt_tokens:
            return Phase.PREFILL
    return Phase.DECODE


def waiting_queue(scheduler: Any, limit: int = MAX_WAITING_IN_SNAPSHOT) -> tuple[QueuedRequest, ...]:
    """Requests still waiting after this step (up to ``limit``): prompt tokens left and arrival time."""
    queued: list[QueuedRequest] = []
    for queue in (getattr(scheduler, "kv_holding_waiting", ()), scheduler.waiting):
        for request in queue:
            if len(queued) >= limit:
                return tuple(queued)
            left = max(0, request.num_tokens - request.num_computed_tokens)
            queued.append(QueuedRequest(request.request_id, left, request.arrival_time))
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
    steps = list(scheduled_steps(scheduler_output))
    scheduled = []
    for step in steps:
        request = requests.get(step.request_id)
        arrival_s = request.arrival_time if request is not None else now_s
        scheduled.append(
            ScheduledRequest(step.request_id, step.num_tokens, step.num_computed_before, arrival_s)
        )
    return BatchSnapshot.build(
        phase=batch_phase(role, steps, requests),
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
