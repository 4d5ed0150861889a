"""``hardware.power_limit_w`` through the instance runtime: set at start, restored at close, honoured by the
simulated GPU's energy, refused on NVIDIA without privilege as one message."""

from __future__ import annotations

import logging

import pytest

from tests.support.runtime_records import HookRecorder, StepClock
from tests.support.standin_nvml import StandinNvml, power_limits_mw
from voltana.adapters.runtime import InstanceRuntime
from voltana.core.config import VoltanaConfig
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.hardware.simulated import performance_model


def _config(**hardware: object) -> VoltanaConfig:
    return VoltanaConfig(enabled=True, hardware=hardware, policy={"clock": "static-max"})  # type: ignore[arg-type]


def _one_long_prefill(runtime: InstanceRuntime, clock: StepClock) -> None:
    snapshot = BatchSnapshot.build(Phase.PREFILL, [ScheduledRequest("a", 1024, 0, clock.now_s)], clock.now_s)
    runtime.before_iteration(snapshot)
    clock.now_s += 0.1
    runtime.after_iteration(["a"])


@pytest.mark.parametrize("limit_w", [None, 250.0])
def test_the_simulated_gpu_runs_the_iteration_under_the_limit(
    recorder: HookRecorder, limit_w: float | None
) -> None:
    runtime = InstanceRuntime.start(_config(vendor="simulated", power_limit_w=limit_w), Phase.PREFILL, "p0")
    clock = StepClock(now_s=10.0)
    runtime._clock = clock
    group = runtime._devices
    try:
        assert runtime._applier is not None and runtime._applier.applied_power_limit_w == limit_w
        _one_long_prefill(runtime, clock)
        assert runtime._applier.wait_applied(2.0)
    finally:
        runtime.close()
    (record,) = recorder.iterations
    model = performance_model()  # the config's simulated GPU: a100-80gb x llama-3.1-8b
    expected = model.cost(Phase.PREFILL, 1, 1024, 0, record.applied_clock_mhz, power_cap_w=limit_w)
    assert record.energy_j == pytest.approx(expected.energy_j)
    if limit_w is not None:
        assert expected.avg_power_w <= limit_w  # the modelled iteration fits under the cap
        assert expected.effective_clock_mhz < record.applied_clock_mhz
    assert group is not None and group.power_limits().current_w == 400.0  # restored at close


def test_an_nvml_limit_is_set_at_start_and_restored_at_close(
    standin_nvml: StandinNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", standin_nvml.env()["LD_LIBRARY_PATH"])  # the watchdog's loader
    runtime = InstanceRuntime.start(_config(vendor="nvidia", power_limit_w=300.0), Phase.DECODE, "n0")
    applier = runtime._applier
    assert applier is not None and applier.watchdog is not None
    assert power_limits_mw(standin_nvml.log()) == {0: 300_000}
    runtime.close()
    assert applier.watchdog.wait_exited(10)
    assert power_limits_mw(standin_nvml.log()) == {0: 400_000}
    assert [e.op for e in standin_nvml.log()] == ["power_limit", "power_limit"]  # nothing else touched


def test_without_privilege_the_power_limit_is_one_error_line(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin_nvml.script(set_power_limit="no_permission")
    monkeypatch.setenv("LD_LIBRARY_PATH", standin_nvml.env()["LD_LIBRARY_PATH"])
    with caplog.at_level(logging.INFO):
        runtime = InstanceRuntime.start(_config(vendor="nvidia", power_limit_w=300.0), Phase.DECODE, "n0")
        assert not runtime.monitor_only  # clock control is not given up for a refused power limit
        runtime.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "power_limit_w = 300 W NOT set" in errors[0] and "CAP_SYS_ADMIN" in errors[0]
    assert power_limits_mw(standin_nvml.log()) == {}
