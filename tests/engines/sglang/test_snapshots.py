"""Real SGLang ``Req``/``ScheduleBatch`` objects and scheduler queues become the right ``BatchSnapshot``."""

from __future__ import annotations

import time

import pytest
from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.model_executor.forward_batch_info import ForwardMode

from tests.engines.sglang.sglang_objects import decode_batch, extend_batch, make_req, scheduler_shell
from voltana.adapters.sglang.snapshot import queue_depths, snapshot_from_batch
from voltana.core.types import Phase

pytestmark = pytest.mark.sglang


def test_prefill_batch_counts_extend_tokens_and_cached_prefixes() -> None:
    fresh = make_req("fresh", 100)
    cached = make_req("cached", 300, cached_tokens=256)
    batch = extend_batch([fresh, cached])
    queued = make_req("queued", 40)
    booting = make_req("booting", 70)
    scheduler = scheduler_shell(DisaggregationMode.PREFILL, waiting=[queued], bootstrap=[booting])

    snap = snapshot_from_batch(batch, scheduler, disaggregation_mode="prefill", now_s=time.perf_counter())

    assert snap is not None and snap.phase is Phase.PREFILL
    assert [(r.request_id, r.new_tokens, r.context_tokens) for r in snap.requests] == [
        ("fresh", 100, 0),
        ("cached", 300 - 256, 256),
    ]
    assert snap.num_new_tokens == batch.extend_num_tokens == 144
    assert snap.num_context_tokens == sum(batch.prefix_lens) == 256
    # The bootstrap queue (handshake with decode pending) comes first: those requests arrived earlier.
    assert [(q.request_id, q.prompt_tokens) for q in snap.waiting] == [("booting", 70), ("queued", 40)]
    # Arrival times are SGLang's own (Req.time_stats, perf_counter), not invented by the adapter.
    assert snap.requests[0].arrival_time_s == fresh.time_stats.scheduler_recv_time <= snap.now_s


def test_decode_batch_uses_batch_size_and_kv_tokens_read() -> None:
    reqs = [
        make_req("a", 10, output_tokens=5),
        make_req("b", 200, output_tokens=1),
        make_req("c", 33, output_tokens=9),
    ]
    batch = decode_batch(reqs)
    pre, trans, wait = make_req("pre", 64), make_req("trans", 128), make_req("wait", 256, output_tokens=1)
    scheduler = scheduler_shell(DisaggregationMode.DECODE, waiting=[wait], prealloc=[pre], transfer=[trans])

    snap = snapshot_from_batch(batch, scheduler, disaggregation_mode="decode", now_s=time.perf_counter())

    assert snap is not None and snap.phase is Phase.DECODE
    assert snap.batch_size == batch.batch_size() == 3
    assert snap.num_new_tokens == 3
    # KV tokens read = sum(seq_len - 1) over the batch (seq_lens_sum is None in 0.5.23 at this point).
    assert batch.seq_lens_sum is None
    assert snap.num_context_tokens == int(batch.seq_lens_cpu.sum()) - 3 == (15 - 1) + (201 - 1) + (42 - 1)
    assert [q.request_id for q in snap.waiting] == ["wait", "trans", "pre"]
    assert queue_depths(scheduler).prealloc == 1 and queue_depths(scheduler).transfer == 1


def test_non_disaggregated_instance_takes_the_phase_from_each_batch() -> None:
    scheduler = scheduler_shell(DisaggregationMode.NULL)
    prefill = snapshot_from_batch(
        extend_batch([make_req("p", 8)]), scheduler, disaggregation_mode="null", now_s=1.0
    )
    decode = snapshot_from_batch(
        decode_batch([make_req("d", 8, output_tokens=2)]), scheduler, disaggregation_mode="null", now_s=1.0
    )
    assert prefill is not None and prefill.phase is Phase.PREFILL
    assert decode is not None and decode.phase is Phase.DECODE


def test_mixed_chunked_prefill_batch_counts_each_request_by_its_extend_length() -> None:
    chunk = make_req("chunk", 512, cached_tokens=256)
    running = make_req("running", 20, output_tokens=4)
    running.prefix_len = running.seqlen - 1  # a decode request riding a mixed batch extends by one token
    batch = extend_batch([chunk, running], mode=ForwardMode.MIXED)
    snap = snapshot_from_batch(
        batch, scheduler_shell(DisaggregationMode.NULL), disaggregation_mode="null", now_s=0.0
    )
    assert snap is not None and snap.phase is Phase.PREFILL
    assert [(r.new_tokens, r.context_tokens) for r in snap.requests] == [(256, 256), (1, 23)]


@pytest.mark.parametrize("mode", [ForwardMode.PREBUILT, ForwardMode.IDLE])
def test_batches_that_run_no_forward_are_skipped(mode: ForwardMode) -> None:
    batch = ScheduleBatch(reqs=[make_req("x", 16)], forward_mode=mode)
    scheduler = scheduler_shell(DisaggregationMode.DECODE)
    assert snapshot_from_batch(batch, scheduler, disaggregation_mode="decode", now_s=0.0) is None


def test_empty_batch_is_skipped() -> None:
    batch = ScheduleBatch(reqs=[], forward_mode=ForwardMode.DECODE)
    assert (
        snapshot_from_batch(
            batch, scheduler_shell(DisaggregationMode.NULL), disaggregation_mode="null", now_s=0
        )
        is None
    )
