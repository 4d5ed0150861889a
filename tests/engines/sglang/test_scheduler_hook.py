"""Calling the hooked ``Scheduler.run_batch`` / ``process_batch_result`` with real SGLang batches.

The methods are wrapped by SGLang's own ``HookRegistry`` exactly as in a server; only the bodies they wrap
are stand-ins (``forward_stub``: no model can run here), so voltana's path is real end to end: snapshot ->
FrequencyController (real policy plugin through pluggy) -> ClockApplier -> simulated GPU, then the measured
iteration back through ``voltana_iteration_finished`` and ``voltana_request_finished``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.managers.schedule_batch import FINISH_LENGTH, ScheduleBatch
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.plugins.hook_registry import HookRegistry

from tests.engines.sglang.sglang_objects import decode_batch, extend_batch, make_req, scheduler_shell
from voltana.adapters.runtime import InstanceRuntime
from voltana.adapters.sglang import binding, plugin
from voltana.adapters.sglang.binding import Placement, SchedulerBinding
from voltana.core.config import VoltanaConfig
from voltana.core.hookspecs import hookimpl
from voltana.core.types import DecisionReason, IterationRecord, Phase, RequestRecord
from voltana.hardware.applier import ClockApplier
from voltana.hardware.device import GpuGroup
from voltana.hardware.errors import NoPermissionError
from voltana.hardware.simulated import SimulatedGpu, performance_model
from voltana.plugins import get_plugin_manager
from voltana.plugins.ecofreq_seed import build_controller

pytestmark = pytest.mark.sglang

FORWARD_S = 0.002  # how long the stand-in forward takes


@dataclass
class Recorder:
    """A voltana plugin that keeps what the runtime broadcasts."""

    iterations: list[IterationRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)

    @hookimpl
    def voltana_iteration_finished(self, record: IterationRecord) -> None:
        self.iterations.append(record)

    @hookimpl
    def voltana_request_finished(self, record: RequestRecord) -> None:
        self.requests.append(record)


@dataclass
class Engine:
    """What a test drives: the hooked scheduler methods' stand-in bodies, and voltana's observers."""

    forwards: list[ScheduleBatch]
    recorder: Recorder
    gpu: SimulatedGpu | None = None
    runtimes: list[InstanceRuntime] = field(default_factory=list)
    appliers: list[ClockApplier] = field(default_factory=list)
    controllers: list[Any] = field(default_factory=list)


def forward_stub(
    self: Scheduler, batch: ScheduleBatch, pp_proxy_tensors: Any = None
) -> GenerationBatchResult:
    """Stands in for the body of ``Scheduler.run_batch`` (the model forward)."""
    if getattr(self, "forward_error", None) is not None:
        raise self.forward_error
    self.forwards.append(batch)
    time.sleep(FORWARD_S)
    return GenerationBatchResult()


def process_stub(self: Scheduler, batch: ScheduleBatch, result: GenerationBatchResult) -> None:
    """Stands in for the body of ``Scheduler.process_batch_result``."""


# In a dict: SGLang's HookRegistry rebinds module attributes that refer to the functions it wraps.
STUBS = {"run_batch": forward_stub, "process_batch_result": process_stub}


@pytest.fixture
def engine(clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    for name, stub in STUBS.items():
        monkeypatch.setattr(Scheduler, name, stub)
    recorder = Recorder()
    get_plugin_manager().register(recorder, name="recorder")
    eng = Engine(forwards=[], recorder=recorder)
    plugin.install(VoltanaConfig(enabled=True))
    HookRegistry.apply_hooks()
    yield eng
    for runtime in eng.runtimes:
        runtime.close()


def bind_simulated(engine: Engine, config: VoltanaConfig, gpu: SimulatedGpu | None = None) -> None:
    """Leader schedulers get a real runtime: EcoFreq/static controller, ClockApplier, simulated A100."""
    model = performance_model("a100-80gb", "llama-3.1-8b")
    engine.gpu = gpu or SimulatedGpu(0, model)

    def factory(scheduler: Scheduler) -> SchedulerBinding:
        mode = binding.disaggregation_mode_of(scheduler)
        phase = binding.runtime_phase(config, mode)
        assert phase is not None
        hook = get_plugin_manager().hook
        controller = build_controller(config, phase, "127.0.0.1:30000", model, hook)
        applier = ClockApplier(GpuGroup([engine.gpu]))
        runtime = InstanceRuntime(
            instance_id="127.0.0.1:30000",
            phase=phase,
            hook=hook,
            controllers={phase: controller},
            devices=GpuGroup([engine.gpu]),
            applier=applier,
            perf_model=model,
        )
        engine.runtimes.append(runtime)
        engine.appliers.append(applier)
        engine.controllers.append(controller)
        return SchedulerBinding(runtime, disaggregation_mode=mode, instance_id=runtime.instance_id)

    binding.set_binding_factory(factory)


def run_iteration(scheduler: Scheduler, batch: ScheduleBatch) -> GenerationBatchResult:
    result = scheduler.run_batch(batch)
    scheduler.process_batch_result(batch, result)
    return result


def test_run_batch_is_the_hooked_wrapper(engine: Engine) -> None:
    for name, stub in STUBS.items():
        assert Scheduler.__dict__[name].__wrapped__ is stub


def test_prefill_iteration_sets_the_clock_and_reports_back(engine: Engine) -> None:
    config = VoltanaConfig(
        enabled=True, policy={"clock": "static-min"}, clocks={"allowed_mhz": [1005, 1200, 1410]}
    )
    bind_simulated(engine, config)
    scheduler = scheduler_shell(DisaggregationMode.PREFILL, waiting=[make_req("later", 30)])
    scheduler.forwards = engine.forwards
    batch = extend_batch([make_req("p1", 120), make_req("p2", 64, cached_tokens=32)])

    result = run_iteration(scheduler, batch)

    assert engine.forwards == [batch] and isinstance(result, GenerationBatchResult)
    [record] = engine.recorder.iterations
    assert record.snapshot.phase is Phase.PREFILL
    assert [(r.request_id, r.new_tokens, r.context_tokens) for r in record.snapshot.requests] == [
        ("p1", 120, 0),
        ("p2", 32, 32),
    ]
    assert [q.request_id for q in record.snapshot.waiting] == ["later"]
    assert record.decision.clock_mhz == 1005 and record.decision.reason is DecisionReason.STATIC
    engine.appliers[0].wait_applied(2.0)
    assert engine.gpu is not None and engine.gpu.locked_clock_mhz == 1005
    assert record.latency_s >= FORWARD_S
    # Both prefills completed with this batch: they leave the prefill instance, one token each.
    assert sorted(
        (r.request_id, r.phase, r.input_tokens, r.output_tokens) for r in engine.recorder.requests
    ) == [
        ("p1", Phase.PREFILL, 120, 1),
        ("p2", Phase.PREFILL, 64, 1),
    ]


def test_decode_iterations_pipelined_like_overlap_scheduling(engine: Engine) -> None:
    config = VoltanaConfig(enabled=True)  # EcoFreq, seeded from the simulated A100
    bind_simulated(engine, config)
    scheduler = scheduler_shell(DisaggregationMode.DECODE)
    scheduler.forwards = engine.forwards
    reqs = [make_req(f"d{i}", 100 * (i + 1), output_tokens=3) for i in range(4)]
    first, second = decode_batch(reqs), decode_batch(reqs[:2])

    # Overlap loop order: launch N, launch N+1, then process N, process N+1.
    r1 = scheduler.run_batch(first)
    r2 = scheduler.run_batch(second)
    reqs[0].finished_reason = FINISH_LENGTH(length=4)
    scheduler.process_batch_result(first, r1)
    scheduler.process_batch_result(second, r2)

    allowed = engine.controllers[0].allowed_clocks_mhz
    records = engine.recorder.iterations
    assert [r.snapshot.iteration for r in records] == [1, 2]
    assert [r.snapshot.batch_size for r in records] == [4, 2]
    assert records[0].snapshot.num_context_tokens == sum(r.seqlen - 1 for r in reqs)
    assert all(r.snapshot.phase is Phase.DECODE and r.decision.clock_mhz in allowed for r in records)
    assert records[0].decision.reason is not DecisionReason.NO_POLICY
    # d0 finished with the first batch; the second (launched before that was known) does not report it again.
    [left] = engine.recorder.requests
    assert (left.request_id, left.phase, left.output_tokens) == ("d0", Phase.DECODE, 3)


def test_prebuilt_and_idle_batches_pass_straight_through(engine: Engine) -> None:
    bind_simulated(engine, VoltanaConfig(enabled=True))
    scheduler = scheduler_shell(DisaggregationMode.DECODE)
    scheduler.forwards = engine.forwards
    for mode in (ForwardMode.PREBUILT, ForwardMode.IDLE):
        run_iteration(scheduler, ScheduleBatch(reqs=[make_req("x", 8)], forward_mode=mode))
    assert len(engine.forwards) == 2
    assert engine.recorder.iterations == []


def test_non_leader_ranks_do_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binding, "_factory", lambda s: plugin.make_binding(VoltanaConfig(enabled=True), s))
    monkeypatch.setattr(plugin, "placement_of", lambda s: Placement(tp_rank=1, tp_size=2, gpu_id=1))
    scheduler = scheduler_shell(DisaggregationMode.PREFILL)
    scheduler.forwards = engine.forwards
    run_iteration(scheduler, extend_batch([make_req("p", 16)]))
    assert scheduler.__dict__[binding.BINDING_ATTR] is None
    assert len(engine.forwards) == 1 and engine.recorder.iterations == []


class ExplodingController:
    """A controller with a bug: its decision raises (the rest of ``voltana.core.protocols.Controller``)."""

    policy = "ecofreq"
    allowed_clocks_mhz = (1005, 1410)
    power_model = None

    def decide(self, snapshot: Any) -> Any:
        raise ZeroDivisionError("division by zero in the policy")

    def observe(self, record: Any) -> None:
        raise AssertionError("not called once monitor-only")


def test_failing_controller_degrades_to_monitor_only_with_one_message(
    engine: Engine, voltana_errors: Any
) -> None:
    runtime = InstanceRuntime(
        instance_id="p",
        phase=Phase.PREFILL,
        hook=get_plugin_manager().hook,
        controllers={Phase.PREFILL: ExplodingController()},
    )
    binding.set_binding_factory(
        lambda s: SchedulerBinding(runtime, disaggregation_mode="prefill", instance_id="p")
    )
    scheduler = scheduler_shell(DisaggregationMode.PREFILL)
    scheduler.forwards = engine.forwards

    results = [run_iteration(scheduler, extend_batch([make_req(f"p{i}", 16)])) for i in range(3)]

    assert all(isinstance(r, GenerationBatchResult) for r in results) and len(engine.forwards) == 3
    [error] = voltana_errors()
    assert "ZeroDivisionError" in error.getMessage() and "monitor-only" in error.getMessage()
    assert runtime.status().monitor_only
    # Still measured, never clocked: every iteration is reported with a monitor-only decision.
    assert [r.decision.reason for r in engine.recorder.iterations] == [DecisionReason.MONITOR_ONLY] * 3


class RefusingGpu(SimulatedGpu):
    """A GPU whose driver refuses clock changes (no root / CAP_SYS_ADMIN)."""

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        raise NoPermissionError("locking clocks needs root or CAP_SYS_ADMIN")


def test_failing_driver_degrades_to_monitor_only_with_one_message(
    engine: Engine, voltana_errors: Any
) -> None:
    config = VoltanaConfig(enabled=True, policy={"clock": "static-min"})
    bind_simulated(engine, config, gpu=RefusingGpu(0, performance_model("a100-80gb", "llama-3.1-8b")))
    scheduler = scheduler_shell(DisaggregationMode.DECODE)
    scheduler.forwards = engine.forwards
    reqs = [make_req("a", 50, output_tokens=1), make_req("b", 70, output_tokens=2)]
    for _ in range(3):
        run_iteration(scheduler, decode_batch(reqs))
        engine.appliers[0].wait_applied(2.0)

    assert len(engine.forwards) == 3 and len(engine.recorder.iterations) == 3
    [error] = voltana_errors()
    assert "monitoring only" in error.getMessage() and "CAP_SYS_ADMIN" in error.getMessage()
    assert engine.appliers[0].monitor_only


def test_unexpected_batch_shape_makes_voltana_pass_through_with_one_message(
    engine: Engine, voltana_errors: Any
) -> None:
    bind_simulated(engine, VoltanaConfig(enabled=True))
    scheduler = scheduler_shell(DisaggregationMode.PREFILL)
    scheduler.forwards = engine.forwards
    odd = extend_batch([make_req("p", 16)])
    odd.reqs = [object()]  # a future SGLang whose requests look different

    for _ in range(2):
        assert isinstance(scheduler.run_batch(odd), GenerationBatchResult)
    run_iteration(scheduler, extend_batch([make_req("q", 16)]))

    assert len(engine.forwards) == 3 and engine.recorder.iterations == []
    [error] = voltana_errors()
    assert "building the batch snapshot failed" in error.getMessage() and "pass-through" in error.getMessage()


def test_an_engine_exception_propagates_unchanged_and_keeps_reports_aligned(engine: Engine) -> None:
    bind_simulated(engine, VoltanaConfig(enabled=True))
    scheduler = scheduler_shell(DisaggregationMode.PREFILL)
    scheduler.forwards = engine.forwards
    scheduler.forward_error = RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        scheduler.run_batch(extend_batch([make_req("boom", 16)]))
    assert len(engine.recorder.iterations) == 1  # the abandoned iteration is closed, not left pending

    scheduler.forward_error = None
    run_iteration(scheduler, extend_batch([make_req("fine", 16)]))
    assert [r.snapshot.requests[0].request_id for r in engine.recorder.iterations] == ["boom", "fine"]


def test_the_real_run_batch_body_runs_under_the_hook_for_a_prebuilt_batch(
    clean_sglang_hooks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stand-in here: SGLang's own ``run_batch`` runs inside voltana's wrapper (a PD-decode placeholder
    batch needs no model), and voltana lets it through untouched."""
    recorder = Recorder()
    get_plugin_manager().register(recorder, name="recorder")
    plugin.install(VoltanaConfig(enabled=True))
    HookRegistry.apply_hooks()
    runtime = InstanceRuntime(instance_id="d", phase=Phase.DECODE, hook=get_plugin_manager().hook)
    binding.set_binding_factory(
        lambda s: SchedulerBinding(runtime, disaggregation_mode="decode", instance_id="d")
    )
    scheduler = scheduler_shell(DisaggregationMode.DECODE)
    scheduler.scheduler_stage_metrics = None
    scheduler.metrics_reporter = SimpleNamespace(record_scheduler_active=lambda now_ns: None)
    scheduler.profiler_manager = SimpleNamespace(_profile_batch_predicate=lambda batch: None)
    scheduler.forward_ct = 0
    scheduler._sched_idled = True
    scheduler.processed_tokens_counter = 0
    scheduler.scripted_scheduler_hook = None
    scheduler.forward_sleep_time = None
    batch = ScheduleBatch(reqs=[make_req("arrived", 64)], forward_mode=ForwardMode.PREBUILT)

    result = scheduler.run_batch(batch)

    assert Scheduler.__dict__["run_batch"].__wrapped__.__qualname__ == "Scheduler.run_batch"
    assert isinstance(result, GenerationBatchResult)
    assert scheduler.forward_ct == 1 and batch.forward_iter == 1  # SGLang's body ran
    assert recorder.iterations == [] and runtime.status().iterations == 0
