"""voltana inside one SGLang scheduler process: the hooks around ``Scheduler.run_batch`` and
``Scheduler.process_batch_result``, and the per-process binding to the engine-neutral runtime.

Why these two methods (SGLang 0.5.23): every scheduler event loop — normal, overlap, PD prefill, PD decode,
pipeline-parallel — launches each batch through ``Scheduler.run_batch`` and hands its result to
``Scheduler.process_batch_result`` in launch order. ``run_batch`` is entered right before the forward, with
the complete ``ScheduleBatch`` (requests, forward mode, prefix/extend lengths, sequence lengths) and the
scheduler's queues, so the clock can be set before the GPU starts; ``process_batch_result`` returns after the
scheduler has waited for the batch's output (it synchronises on the result copy), so its end marks the end
of the iteration even when overlap scheduling launches the next batch first. The runtime measures each
iteration from when it could start (its launch, or the previous iteration's end) to that point.

One scheduler process runs per TP rank (one per GPU). Only the TP/PP-rank-0 scheduler of each instance (each
DP replica) acts: it sees the same batches as its peers and drives the clocks of all the instance's GPUs
(``hardware.device_indices`` defaults to them). The other ranks pass straight through.

Nothing here raises into SGLang: a failure in voltana's own code is logged once, clearly, and the binding
degrades to pass-through (monitor-only); the runtime degrades itself the same way on controller or driver
errors. SGLang's own exceptions propagate unchanged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voltana.adapters.sglang.snapshot import (
    DECODE_MODE,
    PREFILL_MODE,
    QueueDepths,
    queue_depths,
    snapshot_from_batch,
)
from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase

log = logging.getLogger("voltana.sglang")

RUN_BATCH_TARGET = "sglang.srt.managers.scheduler.Scheduler.run_batch"
PROCESS_RESULT_TARGET = "sglang.srt.managers.scheduler.Scheduler.process_batch_result"
BINDING_ATTR = "_voltana_binding"
MAX_UNREPORTED = 16  # iterations launched and never processed (should not happen) are closed beyond this
MAX_REMEMBERED_DEPARTURES = 4096


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one scheduler process sits: its ranks, its GPU, the instance's TP degree and address."""

    tp_rank: int = 0
    pp_rank: int = 0
    dp_rank: int | None = None
    tp_size: int = 1
    gpu_id: int = 0
    gpu_id_step: int = 1
    nnodes: int = 1
    host: str = "127.0.0.1"
    port: int = 30000

    @property
    def is_leader(self) -> bool:
        """The rank that decides and drives the clocks of the whole instance (replica)."""
        return self.tp_rank == 0 and self.pp_rank == 0

    @property
    def instance_gpu_ids(self) -> list[int]:
        """The GPUs (this node's share) of the leader's TP group, as SGLang assigns them."""
        per_node = max(self.tp_size // max(self.nnodes, 1), 1)
        return [self.gpu_id + i * self.gpu_id_step for i in range(per_node)]

    @property
    def instance_id(self) -> str:
        """``host:port`` of the instance's HTTP server, with ``#dpN`` for a data-parallel replica."""
        base = f"{self.host}:{self.port}"
        return f"{base}#dp{self.dp_rank}" if self.dp_rank else base


def _read(source: Any, name: str, default: Any) -> Any:
    try:
        value = getattr(source, name)
    except Exception:  # SGLang's runtime context raises for names this process has not written
        return default
    return default if value is None else value


def placement_of(scheduler: Any) -> Placement:
    """Read the process's place from SGLang's runtime context (``server_args`` for what is not published).

    When the TP rank cannot be read (no published context: a custom launcher), only a single-GPU instance
    can know it is the leader; a multi-GPU one stays pass-through rather than drive clocks from every rank.
    """
    args = getattr(scheduler, "server_args", None)
    parallel: Any = None
    device: Any = None
    try:
        from sglang.srt.runtime_context import get_device, get_parallel

        parallel = get_parallel()
        device = get_device()
    except Exception:
        pass
    tp_size = int(_read(parallel, "tp_size", _read(args, "tp_size", 1)))
    tp_rank = _read(parallel, "tp_rank", None)
    if tp_rank is None:
        tp_rank = 0 if tp_size == 1 else -1
    return Placement(
        tp_rank=int(tp_rank),
        pp_rank=int(_read(parallel, "pp_rank", 0)),
        dp_rank=_read(parallel, "dp_rank", None),
        tp_size=tp_size,
        gpu_id=int(_read(device, "gpu_id", _read(args, "base_gpu_id", 0))),
        gpu_id_step=int(_read(device, "gpu_id_step", _read(args, "gpu_id_step", 1))),
        nnodes=int(_read(args, "nnodes", 1)),
        host=str(_read(args, "host", "127.0.0.1")),
        port=int(_read(args, "port", 30000)),
    )


def disaggregation_mode_of(scheduler: Any) -> str:
    """``prefill``, ``decode`` or ``null`` (SGLang's ``--disaggregation-mode``)."""
    mode = getattr(scheduler, "disaggregation_mode", None)
    return str(getattr(mode, "value", mode) or "null")


def runtime_phase(config: VoltanaConfig, disaggregation_mode: str) -> Phase | None:
    """The instance's role: ``engine.role`` when set, else SGLang's mode; None for a mixed instance."""
    role = config.engine.role if config.engine.role != "auto" else disaggregation_mode
    if role == PREFILL_MODE:
        return Phase.PREFILL
    if role == DECODE_MODE:
        return Phase.DECODE
    return None


def capture_sizes_of(scheduler: Any) -> tuple[int, ...]:
    """The decode CUDA-graph batch sizes (ascending) when SGLang has resolved them, else ()."""
    args = getattr(scheduler, "server_args", None)
    sizes = getattr(args, "cuda_graph_bs_decode", None)
    if isinstance(sizes, list | tuple) and all(isinstance(s, int) for s in sizes):
        return tuple(sorted(sizes))
    return ()


class SchedulerBinding:
    """voltana's state in one leader scheduler process: the runtime and the iterations in flight.

    ``runtime`` is an :class:`voltana.adapters.runtime.InstanceRuntime` (or anything with its
    ``before_iteration`` / ``after_iteration`` / ``request_finished`` / ``status`` methods).
    """

    def __init__(
        self,
        runtime: Any,
        *,
        disaggregation_mode: str,
        instance_id: str,
        capture_sizes: tuple[int, ...] = (),
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.runtime = runtime
        self.disaggregation_mode = disaggregation_mode
        self.instance_id = instance_id
        self.capture_sizes = capture_sizes
        self.queues = QueueDepths()
        self._clock = clock
        self._iteration = 0
        self._in_flight: deque[Any] = deque()  # result objects of tracked batches, launch order
        self._departed: dict[str, None] = {}  # recently reported requests (insertion-ordered, bounded)
        self._broken = ""

    @property
    def broken(self) -> str:
        """Why voltana's SGLang hook stopped acting ("" while it works)."""
        return self._broken

    def before(self, scheduler: Any, batch: Any) -> bool:
        """Snapshot ``batch``, decide and submit its clock. True when the batch is tracked."""
        if self._broken:
            return False
        try:
            snapshot = snapshot_from_batch(
                batch,
                scheduler,
                disaggregation_mode=self.disaggregation_mode,
                now_s=self._clock(),
                iteration=self._iteration + 1,
                instance_id=self.instance_id,
            )
            if snapshot is None:
                return False
            self._iteration += 1
            self.runtime.before_iteration(snapshot)
            return True
        except Exception as exc:
            self.fail("building the batch snapshot failed", exc)
            return False

    def launched(self, result: Any) -> None:
        """The tracked batch is on its way; ``result`` identifies it when SGLang processes it."""
        self._in_flight.append(result)
        while len(self._in_flight) > MAX_UNREPORTED:
            self._in_flight.popleft()
            self._close_iteration(())

    def abandoned(self) -> None:
        """``run_batch`` raised after a tracked ``before``: close that iteration so reports stay aligned."""
        self._close_iteration(())

    def prefill_done_ids(self, batch: Any, result: Any) -> list[str] | None:
        """Before SGLang processes ``result``: requests whose prefill completes with it (None: untracked)."""
        if not any(launched is result for launched in self._in_flight):
            return None
        mode = getattr(batch, "forward_mode", None)
        if mode is None or not mode.is_extend() or mode.is_target_verify():
            return []
        return [req.rid for req in batch.reqs if getattr(req, "inflight_middle_chunks", 0) <= 0]

    def processed(self, scheduler: Any, batch: Any, result: Any, prefill_done: list[str]) -> None:
        """After SGLang processed ``result``: report the iteration and the requests that left."""
        try:
            while self._in_flight:
                head = self._in_flight.popleft()
                if head is result:
                    break
                self._close_iteration(())  # an older launch SGLang never processed
            self._close_iteration(prefill_done)
            self._report_departures(batch, prefill_done)
            self.queues = queue_depths(scheduler)
        except Exception as exc:
            self.fail("reporting the iteration failed", exc)

    def _close_iteration(self, first_token_ids: Any) -> None:
        self.runtime.after_iteration(first_token_ids)

    def _report_departures(self, batch: Any, prefill_done: list[str]) -> None:
        now_s = self._clock()
        done = set(prefill_done) if self.disaggregation_mode == PREFILL_MODE else set()
        for req in batch.reqs:
            if not (req.rid in done or req.finished()):
                continue
            if req.rid in self._departed:
                # Overlap scheduling launched one more step of a request that had already finished.
                forget = getattr(self.runtime, "forget_request", None)
                if forget is not None:
                    forget(req.rid)
                continue
            self.runtime.request_finished(
                req.rid,
                input_tokens=len(req.origin_input_ids),
                output_tokens=max(len(req.output_ids), 1 if req.rid in done else 0),
                finish_time_s=now_s,
            )
            self._departed[req.rid] = None
            if len(self._departed) > MAX_REMEMBERED_DEPARTURES:
                del self._departed[next(iter(self._departed))]

    def fail(self, what: str, exc: BaseException) -> None:
        """Stop acting (pass-through from now on) and say why in one ERROR line, once."""
        if self._broken:
            return
        text = str(exc).strip().splitlines()
        self._broken = f"{what}: {type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
        log.error(
            "voltana (%s): %s; SGLang keeps serving, voltana is now pass-through (no clock changes)",
            self.instance_id,
            self._broken,
        )


BindingFactory = Callable[[Any], "SchedulerBinding | None"]


def _unbound(scheduler: Any) -> SchedulerBinding | None:
    return None


_factory: BindingFactory = _unbound


def set_binding_factory(factory: BindingFactory) -> None:
    """How a scheduler gets its binding on its first batch (the plugin installs the real one)."""
    global _factory
    _factory = factory


def binding_for(scheduler: Any) -> SchedulerBinding | None:
    """This scheduler's binding, built on its first batch; None on non-leader ranks or when inactive."""
    try:
        return scheduler.__dict__[BINDING_ATTR]  # type: ignore[no-any-return]
    except KeyError:
        pass
    try:
        binding = _factory(scheduler)
    except Exception as exc:
        log.error(
            "voltana: could not attach to this SGLang scheduler (%s: %s); pass-through",
            type(exc).__name__,
            exc,
        )
        binding = None
    scheduler.__dict__[BINDING_ATTR] = binding
    return binding


def around_run_batch(
    original: Callable[..., Any], scheduler: Any, batch: Any, *args: Any, **kwargs: Any
) -> Any:
    """AROUND hook on ``Scheduler.run_batch``: snapshot and clock before the forward."""
    binding = binding_for(scheduler)
    if binding is None or not binding.before(scheduler, batch):
        return original(scheduler, batch, *args, **kwargs)
    try:
        result = original(scheduler, batch, *args, **kwargs)
    except BaseException:
        binding.abandoned()
        raise
    binding.launched(result)
    return result


def around_process_batch_result(
    original: Callable[..., Any], scheduler: Any, batch: Any, result: Any, *args: Any, **kwargs: Any
) -> Any:
    """AROUND hook on ``Scheduler.process_batch_result``: the iteration's end, measured and reported."""
    binding = scheduler.__dict__.get(BINDING_ATTR)
    prefill_done = None
    if binding is not None:
        try:
            prefill_done = binding.prefill_done_ids(batch, result)
        except Exception as exc:
            binding.fail("reading the finished batch failed", exc)
    output = original(scheduler, batch, result, *args, **kwargs)
    if prefill_done is not None:
        binding.processed(scheduler, batch, result, prefill_done)
    return output
