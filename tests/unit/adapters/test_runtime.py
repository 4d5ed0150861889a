"""The engine-neutral instance runtime on the simulated GPU, with the real controller, applier and hooks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.runtime_records import HookRecorder, StepClock
from voltana.adapters.iteration_trace import read_trace
from voltana.adapters.runtime import InstanceRuntime
from voltana.core.attribution import attribute_energy
from voltana.core.config import VoltanaConfig
from voltana.core.types import (
    BatchSnapshot,
    DecisionReason,
    Phase,
    ScheduledRequest,
)
from voltana.plugins import get_plugin_manager


def _config(**overrides: object) -> VoltanaConfig:
    data: dict[str, object] = {"enabled": True, "hardware": {"vendor": "simulated"}}
    data.update(overrides)
    return VoltanaConfig(**data)  # type: ignore[arg-type]


def _decode_snapshot(
    now_s: float, iteration: int = 0, contexts: tuple[int, ...] = (100, 300)
) -> BatchSnapshot:
    reqs = [ScheduledRequest(f"r{i}", 1, ctx, now_s - 1.0) for i, ctx in enumerate(contexts)]
    return BatchSnapshot.build(Phase.DECODE, reqs, now_s, iteration=iteration, instance_id="i0")


def test_simulated_gpu_iteration_path(recorder: HookRecorder) -> None:
    clock = StepClock()
    runtime = InstanceRuntime.start(_config(), Phase.DECODE, "i0")
    runtime._clock = clock  # deterministic latency: the test advances time
    try:
        assert not runtime.monitor_only and runtime.status().policy == "ecofreq"
        snapshot = _decode_snapshot(1000.0)
        decision = runtime.before_iteration(snapshot)
        assert runtime._applier is not None and runtime._applier.wait_applied(2.0)
        clock.now_s += 0.02
        record = runtime.after_iteration(first_token_request_ids=["r0"])
        assert record is not None and recorder.iterations == [record]
        assert record.latency_s == pytest.approx(0.02)
        assert record.applied_clock_mhz == decision.clock_mhz
        # energy of a simulated GPU comes from its performance model at the applied clock
        model = runtime._perf_model
        expected = model.cost(Phase.DECODE, 2, 2, 400, record.applied_clock_mhz).energy_j
        assert record.energy_j == pytest.approx(expected)
        finished = runtime.request_finished("r0", input_tokens=100, output_tokens=3, finish_time_s=1001.0)
        assert finished is not None and recorder.requests == [finished]
        assert finished.energy_j == pytest.approx(attribute_energy(snapshot, expected)["r0"])
        assert finished.first_token_time_s == pytest.approx(1000.02)
        assert finished.clock_residency_s == {record.applied_clock_mhz: pytest.approx(0.02)}
        assert runtime.request_finished("unknown", input_tokens=1, output_tokens=1, finish_time_s=0.0) is None
    finally:
        runtime.close()


def test_per_request_energy_sums_to_iteration_energy(recorder: HookRecorder) -> None:
    runtime = InstanceRuntime.start(_config(), Phase.DECODE, "i0")
    try:
        total = 0.0
        for i in range(5):
            runtime.before_iteration(_decode_snapshot(1000.0 + i, i, (100 + i, 300 + i, 50)))
            record = runtime.after_iteration()
            assert record is not None and record.energy_j is not None
            total += record.energy_j
        finished = [
            runtime.request_finished(f"r{i}", input_tokens=1, output_tokens=5, finish_time_s=0.0)
            for i in range(3)
        ]
        assert sum(r.energy_j for r in finished if r is not None) == pytest.approx(total)
    finally:
        runtime.close()


def test_pipelined_iterations_do_not_double_count_time(recorder: HookRecorder) -> None:
    clock = StepClock()
    runtime = InstanceRuntime(
        instance_id="i0", phase=Phase.DECODE, hook=get_plugin_manager().hook, clock=clock
    )
    runtime.before_iteration(_decode_snapshot(1.0, 0))  # dispatched at t=100
    clock.now_s += 0.001
    runtime.before_iteration(_decode_snapshot(1.001, 1))  # scheduled one step ahead
    clock.now_s += 0.019
    first = runtime.after_iteration()
    clock.now_s += 0.015
    second = runtime.after_iteration()
    assert first is not None and second is not None
    assert first.latency_s == pytest.approx(0.020)
    assert second.latency_s == pytest.approx(0.015)  # from the first's end, not from its own dispatch
    assert runtime.after_iteration() is None


def test_unknown_clock_policy_means_monitor_only_with_one_error_listing_the_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    runtime = InstanceRuntime.start(_config(policy={"clock": "ecofrek"}), Phase.DECODE, "d0")
    try:
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "unknown clock policy 'ecofrek'; registered: " in errors[0]
        assert "ecofreq" in errors[0] and "monitor-only" in errors[0]
        assert runtime.monitor_only and runtime.status().policy == "monitor-only"
    finally:
        runtime.close()


def test_missing_gpu_library_means_monitor_only_with_one_error(
    caplog: pytest.LogCaptureFixture, recorder: HookRecorder
) -> None:
    caplog.set_level(logging.INFO)
    runtime = InstanceRuntime.start(_config(hardware={"vendor": "nvidia"}), Phase.PREFILL, "p0")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "GPU control unavailable" in errors[0].getMessage()
    assert "monitor-only" in errors[0].getMessage()
    assert runtime.monitor_only and runtime.status().policy == "monitor-only"
    snapshot = BatchSnapshot.build(Phase.PREFILL, [ScheduledRequest("a", 64, 0, 0.0)], 1.0)
    decision = runtime.before_iteration(snapshot)
    assert decision.reason is DecisionReason.MONITOR_ONLY
    record = runtime.after_iteration()
    assert record is not None and record.energy_j is None and recorder.iterations == [record]


def test_monitor_only_runtime_for_an_invalid_config(caplog: pytest.LogCaptureFixture) -> None:
    runtime = InstanceRuntime.monitor_only_runtime("x", None, "invalid config: slo.ttft_s = -1")
    assert runtime.monitor_only and runtime.role == "mixed"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "voltana (x, mixed): invalid config: slo.ttft_s = -1; "
        "serving continues monitor-only (no clock changes)"
    ]


def test_a_failing_hot_path_never_raises_and_degrades_once(
    caplog: pytest.LogCaptureFixture, recorder: HookRecorder
) -> None:
    runtime = InstanceRuntime.start(_config(), Phase.DECODE, "i0")
    try:

        class Broken:
            def decide(self, snapshot: BatchSnapshot) -> None:
                raise RuntimeError("policy exploded")

        runtime._controllers[Phase.DECODE] = Broken()
        caplog.clear()
        for i in range(3):
            decision = runtime.before_iteration(_decode_snapshot(1.0 + i, i))
            assert decision.reason is DecisionReason.MONITOR_ONLY
            runtime.after_iteration()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "policy exploded" in errors[0]
        assert runtime.monitor_only and runtime._applier is None  # clocks restored, applier stopped
    finally:
        runtime.close()


def test_mixed_batch_honours_the_itl_of_its_decode_steps(recorder: HookRecorder) -> None:
    # A loose TTFT and an impossible ITL: a prefill-only batch may go low, a mixed one must not.
    config = _config(slo={"ttft_s": 1000.0, "itl_s": 1e-9})
    runtime = InstanceRuntime.start(config, None, "m0")
    try:
        max_clock = runtime._controllers[Phase.DECODE].allowed_clocks_mhz[-1]
        prefill_only = BatchSnapshot.build(Phase.PREFILL, [ScheduledRequest("a", 256, 0, 0.0)], 0.0)
        mixed = BatchSnapshot.build(
            Phase.PREFILL, [ScheduledRequest("a", 256, 0, 0.0), ScheduledRequest("b", 1, 500, 0.0)], 0.0
        )
        assert runtime.before_iteration(prefill_only).clock_mhz < max_clock
        runtime.after_iteration()
        assert runtime.before_iteration(mixed).clock_mhz == max_clock
        runtime.after_iteration()
    finally:
        runtime.close()


def test_trace_records_every_iteration(tmp_path: Path, recorder: HookRecorder) -> None:
    path = tmp_path / "trace.jsonl"
    runtime = InstanceRuntime.start(_config(engine={"trace_path": str(path)}), Phase.DECODE, "i0")
    try:
        for i in range(3):
            runtime.before_iteration(_decode_snapshot(1.0 + i, i))
            runtime.after_iteration()
    finally:
        runtime.close()
    lines = read_trace(path)
    assert [line["iteration"] for line in lines] == [0, 1, 2]
    assert lines[0]["requests"] == [["r0", 1, 100], ["r1", 1, 300]]
    assert lines[-1]["hook_time_s"] > 0


def test_trace_headers_reach_the_request_record_and_forget_drops_the_account(recorder: HookRecorder) -> None:
    runtime = InstanceRuntime.start(_config(), Phase.DECODE, "i0")
    try:
        runtime.before_iteration(_decode_snapshot(1000.0))
        runtime.after_iteration()
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        finished = runtime.request_finished(
            "r0",
            input_tokens=1,
            output_tokens=2,
            finish_time_s=0.0,
            trace_headers={"traceparent": traceparent},
        )
        assert finished is not None and finished.trace_headers == {"traceparent": traceparent}
        runtime.forget_request("r1")
        assert runtime.request_finished("r1", input_tokens=1, output_tokens=2, finish_time_s=0.0) is None
        assert [r.request_id for r in recorder.requests] == ["r0"]
    finally:
        runtime.close()


def test_runtime_start_configures_telemetry_from_config() -> None:
    from voltana.plugins.telemetry import active_telemetry, shutdown_telemetry

    shutdown_telemetry()
    runtime = InstanceRuntime.start(_config(telemetry={"exporter": "console"}), Phase.PREFILL, "p0")
    try:
        assert active_telemetry() is not None
    finally:
        runtime.close()
        shutdown_telemetry()
    assert active_telemetry() is None


def test_auto_falling_back_to_the_simulated_gpu_labels_every_energy_figure_simulated(
    recorder: HookRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voltana.core.types import EnergySource, Slo
    from voltana.plugins.telemetry import names
    from voltana.plugins.telemetry.spans import request_metric_attributes, request_span_attributes

    monkeypatch.setenv("LD_LIBRARY_PATH", "/nonexistent")  # no NVML, no AMD SMI here: auto -> simulated
    runtime = InstanceRuntime.start(_config(hardware={"vendor": "auto"}), Phase.DECODE, "i0")
    try:
        assert runtime._devices is not None and runtime._devices.vendor == "simulated"
        runtime.before_iteration(_decode_snapshot(1000.0))
        runtime.after_iteration()
        finished = runtime.request_finished("r0", input_tokens=1, output_tokens=2, finish_time_s=1001.0)
        status = runtime.status()
    finally:
        runtime.close()
    assert status.energy_source is EnergySource.SIMULATED
    assert [r.energy_source for r in recorder.iterations] == [EnergySource.SIMULATED]
    assert finished is not None and finished.energy_source is EnergySource.SIMULATED
    assert request_span_attributes(finished, Slo(1.0, 0.1))[names.ENERGY_SOURCE] == "simulated"
    assert request_metric_attributes(finished)[names.ENERGY_SOURCE] == "simulated"


def test_idle_time_between_iterations_is_instance_idle_energy(recorder: HookRecorder) -> None:
    clock = StepClock()
    runtime = InstanceRuntime.start(_config(), Phase.DECODE, "i0")
    runtime._clock = clock
    try:
        for i in range(3):
            runtime.before_iteration(_decode_snapshot(1000.0 + i, i))
            clock.now_s += 0.02
            runtime.after_iteration()
            clock.now_s += 0.5  # the engine waits for work
        model = runtime._perf_model
        status = runtime.status()
    finally:
        runtime.close()
    busy_j = sum(r.energy_j or 0.0 for r in recorder.iterations)
    assert status.idle_energy_j == pytest.approx(2 * 0.5 * model.idle_power_w())  # the gaps between the three
    assert status.energy_j == pytest.approx(busy_j + status.idle_energy_j)
    assert sum(r.counter_energy_j or 0.0 for r in recorder.iterations) == pytest.approx(status.energy_j)


def test_plugins_that_cannot_load_leave_an_empty_typed_hook_relay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The runtime's hook is pluggy's HookRelay: without plugins, voltana's hooks with nothing behind them."""
    import pluggy

    from voltana.adapters import runtime as runtime_module

    def broken() -> pluggy.PluginManager:
        raise RuntimeError("a plugin failed to import")

    monkeypatch.setattr(runtime_module, "get_plugin_manager", broken)
    with caplog.at_level(logging.ERROR, logger="voltana.runtime"):
        hook = runtime_module._plugin_hook_or_null()
    assert isinstance(hook, pluggy.HookRelay)
    assert hook.voltana_iteration_finished.get_hookimpls() == []
    assert hook.voltana_request_finished(record=None) == []
    assert "plugins could not be loaded (RuntimeError: a plugin failed to import)" in caplog.text
