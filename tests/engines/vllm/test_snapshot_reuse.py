"""The vLLM snapshot reuses a waiting request's QueuedRequest while it is unchanged (real vLLM Requests)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from voltana.adapters.vllm.snapshot import MAX_WAITING_IN_SNAPSHOT, waiting_queue
from voltana.core.types import QueuedRequest

pytestmark = pytest.mark.vllm

vllm = pytest.importorskip("vllm")
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.request import Request  # noqa: E402


def _waiting(req_id: str, prompt_len: int, arrival_s: float) -> Request:
    return Request(
        req_id, list(range(prompt_len)), SamplingParams(max_tokens=8), None, arrival_time=arrival_s
    )


def test_unchanged_waiting_requests_are_reused_and_changed_ones_rebuilt() -> None:
    first, second = _waiting("w1", 30, 1.0), _waiting("w2", 50, 2.0)
    scheduler = SimpleNamespace(waiting=[first, second], kv_holding_waiting=[])
    before = waiting_queue(scheduler)
    assert before == (QueuedRequest("w1", 30, 1.0), QueuedRequest("w2", 50, 2.0))
    second.num_computed_tokens = 16  # a chunk of w2's prompt was computed, then it was preempted
    after = waiting_queue(scheduler)
    assert after[0] is before[0]
    assert after[1] == QueuedRequest("w2", 34, 2.0) and after[1] is not before[1]


def test_the_queue_copy_stays_bounded() -> None:
    scheduler = SimpleNamespace(
        waiting=[_waiting(f"w{i}", 8, float(i)) for i in range(MAX_WAITING_IN_SNAPSHOT + 5)],
        kv_holding_waiting=[],
    )
    queued = waiting_queue(scheduler)
    assert (
        len(queued) == MAX_WAITING_IN_SNAPSHOT and queued[-1].request_id == f"w{MAX_WAITING_IN_SNAPSHOT - 1}"
    )
