"""The per-iteration hook in vLLM's V1 scheduler (EngineCore process): snapshot -> runtime -> clock.

``Scheduler.schedule()`` is wrapped: when it returns a step with tokens to compute, the step's snapshot goes
to :meth:`InstanceRuntime.before_iteration` (decision + non-blocking clock submit) before EngineCore
dispatches the forward. ``Scheduler.update_from_output()`` is wrapped: on entry (the model output is back)
the oldest pending step is closed with :meth:`InstanceRuntime.after_iteration`; on exit, requests vLLM freed
leave the runtime (``voltana_request_finished``) and the instance state is published for ``/metrics``.
A failure inside the hook disables it with one log line; vLLM's own behaviour is never changed.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from typing import Any

from voltana.adapters.engine_control import EngineControlChannel
from voltana.adapters.runtime import InstanceRuntime
from voltana.adapters.state_payload import StatePublisher
from voltana.adapters.vllm.snapshot import build_snapshot, first_token_request_ids
from voltana.adapters.vllm.state import RequestEnergyLog, control_dirs, engine_state_path, state_dir
from voltana.core.config import ConfigError, VoltanaConfig, load_config
from voltana.core.state_payload import InstanceStatePayload
from voltana.core.types import Phase

log = logging.getLogger("voltana.adapters.vllm")

_INSTALLED_FLAG = "_voltana_hook_installed"


def resolve_role(config: VoltanaConfig | None, vllm_config: Any) -> Phase | None:
    """The instance's phase: ``engine.role`` if set, else from ``kv_transfer_config.kv_role``.

    ``kv_producer`` -> prefill, ``kv_consumer`` -> decode; ``kv_both`` (NixlConnector, ExampleConnector)
    and no connector -> mixed (None), since the role is not knowable from vLLM's config alone.
    """
    role = config.engine.role if config is not None else "auto"
    if role == "prefill":
        return Phase.PREFILL
    if role == "decode":
        return Phase.DECODE
    if role == "mixed":
        return None
    kv = getattr(vllm_config, "kv_transfer_config", None)
    if kv is not None and getattr(kv, "kv_connector", None):
        if kv.kv_role == "kv_producer":
            return Phase.PREFILL
        if kv.kv_role == "kv_consumer":
            return Phase.DECODE
    return None


class VllmSchedulerHook:
    """One engine's bridge between vLLM's scheduler and an :class:`InstanceRuntime`."""

    def __init__(
        self,
        runtime: InstanceRuntime,
        role: Phase | None,
        engine_index: int,
        capture_sizes: tuple[int, ...],
        kv_capacity_tokens: int,
    ) -> None:
        self.runtime = runtime
        self.role = role
        self.engine_index = engine_index
        self.capture_sizes = capture_sizes
        self.kv_capacity_tokens = kv_capacity_tokens
        self._iteration = 0
        self._inflight: deque[tuple[Any, list[str]]] = deque()
        self._tracked: dict[str, Any] = {}
        directory = state_dir()
        self._energy_log = RequestEnergyLog(directory if runtime.measures_energy else None, engine_index)
        # JSON, the state file and the request log's appends happen on the publisher's thread, not vLLM's.
        self._publisher = StatePublisher(
            engine_state_path(directory, engine_index), after_write=self._energy_log.flush
        ).start()
        # Measured energy is settled by the sampler thread after the request left: records come from there.
        runtime.add_request_observer(self._energy_log.add_record)
        self._broken = False
        self.control: Any | None = None  # EngineControlChannel: clock pins and the iteration ring
        self.hook_time_s = 0.0
        """Total time spent in this hook, snapshot building included (s)."""

    # Called from the wrapped scheduler methods; each swallows its own failures.

    def after_schedule(self, scheduler: Any, scheduler_output: Any) -> None:
        if self._broken:
            return
        t0 = time.perf_counter()
        try:
            self._finish(scheduler_output.finished_req_ids)
            if scheduler_output.total_num_scheduled_tokens <= 0:
                return  # nothing to compute: no forward, no iteration
            for new in scheduler_output.scheduled_new_reqs:
                request = scheduler.requests.get(new.req_id)
                if request is not None:
                    self._tracked[new.req_id] = request
            snapshot = build_snapshot(
                scheduler, scheduler_output, self.role, time.time(), self._iteration, self.runtime.instance_id
            )
            self._iteration += 1
            self.runtime.before_iteration(snapshot)
            self._inflight.append((scheduler_output, first_token_request_ids(scheduler, scheduler_output)))
        except Exception as exc:
            self._break(exc)
        self.hook_time_s += time.perf_counter() - t0

    def before_update(self, scheduler_output: Any) -> None:
        if self._broken or not self._inflight:
            return
        t0 = time.perf_counter()
        try:
            if self._inflight[0][0] is scheduler_output:
                _, first_ids = self._inflight.popleft()
                self.runtime.after_iteration(first_ids)
        except Exception as exc:
            self._break(exc)
        self.hook_time_s += time.perf_counter() - t0

    def after_update(self, scheduler: Any) -> None:
        if self._broken:
            return
        t0 = time.perf_counter()
        try:
            self._finish(scheduler.finished_req_ids)
            if self._publisher.due() or not scheduler.running:  # throttled, and always when going idle
                self._publisher.submit(self.state(scheduler))
        except Exception as exc:
            self._break(exc)
        self.hook_time_s += time.perf_counter() - t0

    def state(self, scheduler: Any) -> InstanceStatePayload:
        """This instance as the router sees it (``/voltana/state``; cheap: counts and one sum over the
        running batch, no I/O)."""
        running = scheduler.running
        return InstanceStatePayload.from_status(
            self.runtime.status(),
            engine=self.engine_index,
            capture_sizes=self.capture_sizes,
            num_requests_running=len(running),
            num_requests_waiting=len(scheduler.waiting) + len(getattr(scheduler, "kv_holding_waiting", ())),
            kv_tokens=sum(r.num_computed_tokens for r in running),
            kv_capacity_tokens=self.kv_capacity_tokens,
            hook_seconds=self.hook_time_s,
        )

    def shutdown(self) -> None:
        if self.control is not None:
            self.control.close()
        self._publisher.close(remove=False)  # the last state stays for /metrics until it goes stale
        self.runtime.close()

    def _finish(self, finished_ids: Any) -> None:
        if not finished_ids or not self._tracked:
            return
        now_s = time.time()
        for req_id in [r for r in finished_ids if r in self._tracked]:
            request = self._tracked.pop(req_id)
            self.runtime.request_finished(
                req_id,
                input_tokens=int(request.num_prompt_tokens),
                output_tokens=int(request.num_output_tokens),
                finish_time_s=now_s,
                trace_headers=getattr(request, "trace_headers", None),
            )

    def _break(self, exc: Exception) -> None:
        self._broken = True
        log.error(
            "voltana: the vLLM iteration hook failed (%s: %s); it is off for this engine, vLLM serves on",
            type(exc).__name__,
            exc,
        )
        self.runtime.close()


def _engine_facts(scheduler: Any) -> tuple[str, int, tuple[int, ...], int]:
    vllm_config = scheduler.vllm_config
    served = getattr(vllm_config.model_config, "served_model_name", "") or ""
    model_name = served[0] if isinstance(served, list) and served else str(served)
    engine_index = int(getattr(vllm_config.parallel_config, "data_parallel_rank", 0) or 0)
    sizes = getattr(vllm_config.compilation_config, "cudagraph_capture_sizes", None) or []
    blocks = getattr(scheduler.cache_config, "num_gpu_blocks", 0) or 0
    return (
        model_name,
        engine_index,
        tuple(sorted(int(s) for s in sizes)),
        int(blocks) * int(scheduler.block_size),
    )


def create_hook(scheduler: Any) -> VllmSchedulerHook | None:
    """Build the hook for a freshly constructed scheduler; None when voltana is disabled. Never raises."""
    try:
        model_name, engine_index, capture_sizes, kv_capacity = _engine_facts(scheduler)
        try:
            config: VoltanaConfig | None = load_config().config
        except ConfigError as exc:
            config = None
            config_error = str(exc)
        if config is not None and not config.enabled:
            return None
        role = resolve_role(config, scheduler.vllm_config)
        instance_id = f"vllm-{role.value if role else 'mixed'}-{engine_index}-{os.getpid()}"
        if config is None:
            runtime = InstanceRuntime.monitor_only_runtime(
                instance_id, role, f"{config_error}", model_name=model_name
            )
        else:
            if role is None and config.engine.role == "auto" and scheduler.vllm_config.kv_transfer_config:
                log.info("voltana: kv_role does not say prefill or decode; set VOLTANA_ENGINE__ROLE for P/D")
            runtime = InstanceRuntime.start(config, role, instance_id, model_name=model_name)
        hook = VllmSchedulerHook(runtime, role, engine_index, capture_sizes, kv_capacity)
        dirs = control_dirs(engine_index)
        if config is not None and dirs is not None:
            hook.control = EngineControlChannel(runtime, *dirs, config.engine.iteration_buffer).start()
        return hook
    except Exception as exc:
        log.error(
            "voltana: could not attach to the vLLM scheduler (%s: %s); vLLM serves without voltana",
            type(exc).__name__,
            exc,
        )
        return None


def install_scheduler_hook() -> bool:
    """Wrap ``Scheduler.__init__``, ``schedule``, ``update_from_output`` and ``shutdown`` once per process.

    Returns True if it installed now, False if already installed.
    """
    from vllm.v1.core.sched.scheduler import Scheduler

    if getattr(Scheduler, _INSTALLED_FLAG, False):
        return False
    orig_init = Scheduler.__init__
    orig_schedule = Scheduler.schedule
    orig_update = Scheduler.update_from_output
    orig_shutdown = Scheduler.shutdown

    @functools.wraps(orig_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        self._voltana_hook = create_hook(self)

    @functools.wraps(orig_schedule)
    def schedule(self: Any, *args: Any, **kwargs: Any) -> Any:
        output = orig_schedule(self, *args, **kwargs)
        hook = getattr(self, "_voltana_hook", None)
        if hook is not None:
            hook.after_schedule(self, output)
        return output

    @functools.wraps(orig_update)
    def update_from_output(self: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        hook = getattr(self, "_voltana_hook", None)
        if hook is not None:
            hook.before_update(scheduler_output)
        result = orig_update(self, scheduler_output, *args, **kwargs)
        if hook is not None:
            hook.after_update(self)
        return result

    @functools.wraps(orig_shutdown)
    def shutdown(self: Any, *args: Any, **kwargs: Any) -> Any:
        hook = getattr(self, "_voltana_hook", None)
        if hook is not None:
            hook.shutdown()
        return orig_shutdown(self, *args, **kwargs)

    Scheduler.__init__ = init  # type: ignore[method-assign]
    Scheduler.schedule = schedule  # type: ignore[method-assign]
    Scheduler.update_from_output = update_from_output  # type: ignore[method-assign]
    Scheduler.shutdown = shutdown  # type: ignore[method-assign]
    setattr(Scheduler, _INSTALLED_FLAG, True)
    return True
