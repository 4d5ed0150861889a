"""Real SGLang objects built without a model: ``Req``, ``ScheduleBatch``, a ``Scheduler`` shell, P/D queues.

A ``Req`` goes through SGLang's own ``init_next_round_input``; the batch fields are set exactly as
``ScheduleBatch.prepare_for_extend`` / ``prepare_for_decode`` set them (those allocate KV on a device, which
needs a loaded model). The scheduler is the real class without ``__init__`` (which loads the model), with the
attributes voltana reads. Used by the ``sglang`` test tier and ``benchmarks/bench_sglang_hook.py``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from array import array
from collections.abc import Iterator
from types import SimpleNamespace

import torch
import uvicorn
from sglang.srt.disaggregation.decode import DecodePreallocQueue, DecodeRequest, DecodeTransferQueue
from sglang.srt.disaggregation.prefill import PrefillBootstrapQueue
from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.sampling.sampling_params import SamplingParams


def make_req(rid: str, prompt_tokens: int, *, cached_tokens: int = 0, output_tokens: int = 0) -> Req:
    """A request with ``prompt_tokens`` prompt ids, ``output_tokens`` generated ids and a cached prefix."""
    req = Req(rid, "", array("q", range(1, prompt_tokens + 1)), SamplingParams(max_new_tokens=64))
    req.output_ids.extend(range(7, 7 + output_tokens))
    req.init_next_round_input(None)
    req.prefix_len = cached_tokens  # what the radix-cache match sets
    req.extend_end = len(req.full_untruncated_fill_ids)  # what the prefill adder sets (no chunking)
    return req


def extend_batch(reqs: list[Req], mode: ForwardMode = ForwardMode.EXTEND) -> ScheduleBatch:
    """A prefill batch with the fields ``prepare_for_extend`` sets."""
    batch = ScheduleBatch(reqs=reqs, forward_mode=mode)
    batch.prefix_lens = [r.prefix_len for r in reqs]
    batch.extend_lens = [r.extend_len for r in reqs]
    batch.extend_num_tokens = sum(len(r.get_fill_ids()[r.prefix_len :]) for r in reqs)
    batch.seq_lens_cpu = torch.tensor([r.extend_end for r in reqs], dtype=torch.int64)
    return batch


def decode_batch(reqs: list[Req]) -> ScheduleBatch:
    """A decode batch as ``prepare_for_decode`` leaves it: ``seq_lens`` already count this step's token."""
    batch = ScheduleBatch(reqs=reqs, forward_mode=ForwardMode.DECODE)
    batch.seq_lens_cpu = torch.tensor([r.seqlen for r in reqs], dtype=torch.int64)
    batch.seq_lens_sum = None  # SGLang 0.5.23 recomputes it lazily in ForwardBatch
    return batch


def scheduler_shell(
    mode: DisaggregationMode,
    *,
    waiting: list[Req] = (),  # type: ignore[assignment]
    bootstrap: list[Req] = (),  # type: ignore[assignment]
    prealloc: list[Req] = (),  # type: ignore[assignment]
    transfer: list[Req] = (),  # type: ignore[assignment]
    port: int = 30000,
) -> Scheduler:
    """The real ``Scheduler`` class, uninitialised, with the queues of a ``mode`` instance."""
    scheduler = Scheduler.__new__(Scheduler)
    scheduler.disaggregation_mode = mode
    scheduler.waiting_queue = list(waiting)
    scheduler.server_args = SimpleNamespace(
        host="127.0.0.1",
        port=port,
        tp_size=1,
        base_gpu_id=0,
        gpu_id_step=1,
        nnodes=1,
        cuda_graph_bs_decode=[1, 2, 4, 8, 16],
        served_model_name="tiny",
        model_path="tiny",
    )
    scheduler.disagg_prefill_bootstrap_queue = None
    scheduler.disagg_prefill_inflight_queue = None
    scheduler.disagg_decode_prealloc_queue = None
    scheduler.disagg_decode_transfer_queue = None
    if mode is DisaggregationMode.PREFILL:
        queue = PrefillBootstrapQueue.__new__(PrefillBootstrapQueue)
        queue.queue = list(bootstrap)
        scheduler.disagg_prefill_bootstrap_queue = queue
        scheduler.disagg_prefill_inflight_queue = []
    if mode is DisaggregationMode.DECODE:
        pre = DecodePreallocQueue.__new__(DecodePreallocQueue)
        pre.queue = [DecodeRequest(req=r, kv_receiver=None) for r in prealloc]
        trans = DecodeTransferQueue.__new__(DecodeTransferQueue)
        trans.queue = [DecodeRequest(req=r, kv_receiver=None) for r in transfer]
        scheduler.disagg_decode_prealloc_queue = pre
        scheduler.disagg_decode_transfer_queue = trans
    return scheduler


@contextlib.contextmanager
def served_http_app(app: object, launch_hook: object) -> Iterator[tuple[str, int]]:
    """SGLang's FastAPI ``app`` on a free loopback port, after ``launch_hook(args)`` (the plugin's pre-launch
    hook, which adds voltana's routes) ran as SGLang runs it; yields (base URL, port), then stops it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    launch_hook(SimpleNamespace(port=port))  # type: ignore[operator]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(5)
