"""SGLang's ``ScheduleBatch`` and scheduler queues -> voltana's engine-neutral ``BatchSnapshot``.

Duck-typed on SGLang 0.5.23's objects (``Req``, ``ScheduleBatch``, ``ForwardMode``, the disaggregation
queues), so this module imports nothing from SGLang. Times are ``time.perf_counter()`` seconds, the clock of
SGLang's own ``Req.time_stats``.

Per request (``ScheduledRequest``):
- extend (prefill, chunked prefill, mixed) batches: ``new_tokens = extend_lens[i]`` (tokens computed now),
  ``context_tokens = prefix_lens[i]`` (cached prefix or earlier chunks), as set by ``prepare_for_extend``;
- decode batches: ``new_tokens = 1``, ``context_tokens = seq_len - 1`` (KV tokens read), with ``seq_len`` from
  ``seq_lens_cpu`` (already counting this step's token, as ``prepare_for_decode`` leaves it) or, failing
  that, the request's own ``seqlen``.

``waiting`` lists the requests that will need this instance soon: on a prefill (or non-disaggregated)
instance the waiting queue plus the bootstrap queue (their TTFT clock already runs), with ``prompt_tokens``
still to prefill; on a decode instance the waiting, transfer and pre-allocation queues, with
``prompt_tokens`` the KV they bring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from voltana.core.types import BatchSnapshot, Phase, QueuedRequest, ScheduledRequest

PREFILL_MODE = "prefill"
DECODE_MODE = "decode"


def runs_forward(batch: Any) -> bool:
    """False for batches that run no model forward of their own and must be skipped.

    That is: no forward mode yet, PD-decode ``PREBUILT`` placeholder batches (KV arrived by transfer),
    ``IDLE`` batches (DP-attention padding), empty batches and the later pieces of a split prefill.
    """
    mode = getattr(batch, "forward_mode", None)
    if mode is None or mode.is_prebuilt() or mode.is_idle():
        return False
    if not getattr(batch, "reqs", None):
        return False
    return not (mode.is_split_prefill() and getattr(batch, "split_index", 0) > 0)


def phase_of(disaggregation_mode: str, batch: Any) -> Phase:
    """The instance's P/D role fixes the phase; a non-disaggregated instance takes it from each batch."""
    if disaggregation_mode == PREFILL_MODE:
        return Phase.PREFILL
    if disaggregation_mode == DECODE_MODE:
        return Phase.DECODE
    return Phase.PREFILL if _is_extend(batch.forward_mode) else Phase.DECODE


def _is_extend(mode: Any) -> bool:
    # Speculative TARGET_VERIFY counts as "extend" in SGLang but is a decode step.
    return bool(mode.is_extend()) and not mode.is_target_verify()


def _arrival_s(req: Any) -> float:
    return float(req.time_stats.scheduler_recv_time)


def scheduled_requests(batch: Any) -> list[ScheduledRequest]:
    """One ``ScheduledRequest`` per request in ``batch`` (see the module docstring for the token rule)."""
    reqs = batch.reqs
    extend_lens = batch.extend_lens
    prefix_lens = batch.prefix_lens
    if _is_extend(batch.forward_mode) and extend_lens is not None and prefix_lens is not None:
        return [
            ScheduledRequest(req.rid, new, prefix, req.time_stats.scheduler_recv_time)
            for req, new, prefix in zip(reqs, extend_lens, prefix_lens, strict=True)
        ]
    return [
        ScheduledRequest(req.rid, 1, seq_len - 1 if seq_len > 0 else 0, req.time_stats.scheduler_recv_time)
        for req, seq_len in zip(reqs, _seq_lens(batch), strict=True)
    ]


def _seq_lens(batch: Any) -> Sequence[int]:
    seq_lens_cpu = batch.seq_lens_cpu
    if seq_lens_cpu is not None and len(seq_lens_cpu) == len(batch.reqs):
        values: list[int] = seq_lens_cpu.tolist()
        return values
    return [req.seqlen for req in batch.reqs]


QUEUED_ATTR = "_voltana_queued"


def _queued(reqs: Iterable[Any], to_compute: bool) -> list[QueuedRequest]:
    """``QueuedRequest`` per request, cached on the ``Req`` while its numbers stay the same (queues are long
    and change little between iterations; building frozen dataclasses is what costs here)."""
    out: list[QueuedRequest] = []
    append = out.append
    for req in reqs:
        tokens = len(req.origin_input_ids)
        if to_compute:
            tokens = max(tokens - req.prefix_len, 0)
        cached = req.__dict__.get(QUEUED_ATTR)
        if cached is None or cached.prompt_tokens != tokens:
            cached = QueuedRequest(req.rid, tokens, req.time_stats.scheduler_recv_time)
            req.__dict__[QUEUED_ATTR] = cached
        append(cached)
    return out


def _entries(queue: Any) -> list[Any]:
    """The ``Req`` objects of one SGLang disaggregation queue (``.queue`` of ``Req`` or ``DecodeRequest``)."""
    if queue is None:
        return []
    items = queue.queue if hasattr(queue, "queue") else queue
    return [getattr(item, "req", item) for item in items]


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """How many requests sit in each of the scheduler's queues (the router/telemetry view)."""

    waiting: int = 0
    bootstrap: int = 0
    inflight: int = 0
    prealloc: int = 0
    transfer: int = 0


def queue_depths(scheduler: Any) -> QueueDepths:
    """Lengths of the waiting queue and the four P/D queues (0 for those this instance does not have)."""
    return QueueDepths(
        waiting=_depth(getattr(scheduler, "waiting_queue", None)),
        bootstrap=_depth(getattr(scheduler, "disagg_prefill_bootstrap_queue", None)),
        inflight=_depth(getattr(scheduler, "disagg_prefill_inflight_queue", None)),
        prealloc=_depth(getattr(scheduler, "disagg_decode_prealloc_queue", None)),
        transfer=_depth(getattr(scheduler, "disagg_decode_transfer_queue", None)),
    )


def _depth(queue: Any) -> int:
    if queue is None:
        return 0
    return len(queue.queue if hasattr(queue, "queue") else queue)


def waiting_requests(scheduler: Any, phase: Phase) -> list[QueuedRequest]:
    """The requests that will need this instance soon (see the module docstring), oldest queue first."""
    waiting = getattr(scheduler, "waiting_queue", None) or []
    if phase is Phase.PREFILL:
        bootstrap = _entries(getattr(scheduler, "disagg_prefill_bootstrap_queue", None))
        return _queued(bootstrap, True) + _queued(waiting, True)
    transfer = _entries(getattr(scheduler, "disagg_decode_transfer_queue", None))
    prealloc = _entries(getattr(scheduler, "disagg_decode_prealloc_queue", None))
    return _queued(waiting, False) + _queued(transfer, False) + _queued(prealloc, False)


def snapshot_from_batch(
    batch: Any,
    scheduler: Any,
    *,
    disaggregation_mode: str,
    now_s: float,
    iteration: int = 0,
    instance_id: str = "",
) -> BatchSnapshot | None:
    """The ``BatchSnapshot`` of ``batch`` about to run on ``scheduler``; None when it runs no forward."""
    if not runs_forward(batch):
        return None
    phase = phase_of(disaggregation_mode, batch)
    return BatchSnapshot.build(
        phase,
        scheduled_requests(batch),
        now_s=now_s,
        waiting=waiting_requests(scheduler, phase),
        iteration=iteration,
        instance_id=instance_id,
    )
