"""The instance runtime on NVIDIA through the real ``pynvml`` and the stand-in NVML library (C, scriptable).

Each test reproduces one failure an operator met on a real driver: a missing or failing energy counter, a
clock the driver arbitrates, a refused lock, an engine killed with its clocks locked, per-iteration energy
reads.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.support.runtime_records import HookRecorder
from tests.support.standin_nvml import StandinNvml, locked_devices
from voltana.adapters.runtime import InstanceRuntime
from voltana.core.config import VoltanaConfig
from voltana.core.controller import APPLIED_CLOCK_KEY
from voltana.core.types import BatchSnapshot, EnergySource, Phase, ScheduledRequest


def _config(**hardware: object) -> VoltanaConfig:
    return VoltanaConfig(enabled=True, hardware={"vendor": "nvidia", **hardware})  # type: ignore[arg-type]


def _decode(now_s: float, iteration: int, ids: list[str]) -> BatchSnapshot:
    requests = [ScheduledRequest(rid, 1, 200 + 10 * i, now_s - 1.0) for i, rid in enumerate(ids)]
    return BatchSnapshot.build(Phase.DECODE, requests, now_s, iteration=iteration, instance_id="n0")


def _run(runtime: InstanceRuntime, iterations: int, ids: list[str], step_s: float = 0.0) -> None:
    for i in range(iterations):
        runtime.before_iteration(_decode(time.time(), i, ids))
        if step_s:
            time.sleep(step_s)
        runtime.after_iteration()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _with_watchdog_env(standin: StandinNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes (the watchdog) load the stand-in the real way: LD_LIBRARY_PATH."""
    monkeypatch.setenv("LD_LIBRARY_PATH", standin.env()["LD_LIBRARY_PATH"])


@pytest.mark.parametrize("counter", ["not_supported", "fails_once"])
def test_a_missing_or_failing_energy_counter_keeps_clock_control(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture, recorder: HookRecorder, counter: str
) -> None:
    if counter == "not_supported":
        standin_nvml.script(energy="not_supported")
    else:
        standin_nvml.script(energy_fail_reads=[2])  # the read after the baseline fails once
    caplog.set_level(logging.INFO)
    runtime = InstanceRuntime.start(_config(watchdog=False), Phase.DECODE, "n0")
    try:
        _run(runtime, 20, ["a", "b"], step_s=0.005)
        assert runtime._applier is not None and runtime._applier.wait_applied(2.0)
        assert not runtime.monitor_only, runtime.status().monitor_only_reason
        assert any(e.op == "lock" and e.ret == 0 for e in standin_nvml.log())
    finally:
        runtime.close()
    assert _errors(caplog) == []
    expected = EnergySource.POWER_INTEGRATED if counter == "not_supported" else EnergySource.MEASURED
    assert runtime.status().energy_source is EnergySource.UNKNOWN  # closed: the accounting is released
    assert {r.energy_source for r in recorder.iterations} == {expected}


def test_the_read_back_clock_is_the_applied_clock_everywhere(
    standin_nvml: StandinNvml, recorder: HookRecorder
) -> None:
    standin_nvml.script(arbitrate_max_mhz=1200)  # asked 1410, the driver runs 1200
    config = _config(watchdog=False)
    config = config.model_copy(update={"slo": config.slo.model_copy(update={"itl_s": 1e-9})})  # max clock
    runtime = InstanceRuntime.start(config, Phase.DECODE, "n0")
    try:
        decision = runtime.before_iteration(_decode(time.time(), 0, ["a"]))
        assert decision.clock_mhz == 1410
        assert runtime._applier is not None and runtime._applier.wait_applied(2.0)
        runtime.after_iteration()
        _run(runtime, 3, ["a"])
        finished = runtime.request_finished("a", input_tokens=1, output_tokens=4, finish_time_s=time.time())
        status = runtime.status()
        controller = runtime._controllers[Phase.DECODE]
    finally:
        runtime.close()
    assert {r.applied_clock_mhz for r in recorder.iterations} == {1200}
    assert status.sm_clock_mhz == 1200
    assert controller.ctx.state[APPLIED_CLOCK_KEY] == 1200  # what the policy and predictor were told
    assert controller.predictor.num_observations == 4
    assert finished is None  # measured energy: settled (and emitted) by the sampler thread
    assert [set(r.clock_residency_s) for r in recorder.requests] == [{1200}]


def test_a_refused_lock_logs_one_error_and_resets_nothing(
    standin_nvml: StandinNvml,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    standin_nvml.script(lock="no_permission")
    _with_watchdog_env(standin_nvml, monkeypatch)
    runtime = InstanceRuntime.start(_config(), Phase.DECODE, "n0")
    applier = runtime._applier
    assert applier is not None and applier.watchdog is not None  # on by default
    _run(runtime, 3, ["a"])
    assert applier.wait_applied(2.0)
    runtime.close()
    assert applier.watchdog.wait_exited(10)
    errors = _errors(caplog)
    assert len(errors) == 1 and "Insufficient Permissions" in errors[0]
    assert [e.op for e in standin_nvml.log() if e.op in ("lock", "reset")] == ["lock"]
    assert "could not" not in capfd.readouterr().err


KILLED_ENGINE = textwrap.dedent(
    """
    import sys, time
    from voltana.adapters.runtime import InstanceRuntime
    from voltana.core.config import VoltanaConfig
    from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest

    config = VoltanaConfig(enabled=True, hardware={"vendor": "nvidia", "watchdog": sys.argv[1] == "on"},
                           slo={"itl_s": 1e-9})
    runtime = InstanceRuntime.start(config, Phase.DECODE, "k0")
    snapshot = BatchSnapshot.build(Phase.DECODE, [ScheduledRequest("a", 1, 100, 0.0)], 1.0)
    runtime.before_iteration(snapshot)
    runtime._applier.wait_applied(5.0)
    runtime.after_iteration()
    if runtime._applier.watchdog is not None:
        assert runtime._applier.watchdog.wait_ready(30.0)
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize(("watchdog", "kill"), [("on", "engine"), ("on", "tree"), ("off", "engine")])
def test_sigkill_of_the_engine_resets_clocks_within_a_second_with_the_watchdog(
    standin_nvml: StandinNvml, watchdog: str, kill: str
) -> None:
    """``tree``: SIGKILL every descendant first, as vLLM's shutdown does to EngineCore (kill_process_tree)."""
    import psutil

    env = standin_nvml.env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    engine = subprocess.Popen(
        [sys.executable, "-c", KILLED_ENGINE, watchdog], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert engine.stdout is not None and engine.stdout.readline().strip() == "locked"
        assert locked_devices(standin_nvml.log()) == {0: 1410}
        killed_s = time.monotonic()
        if kill == "tree":
            for child in psutil.Process(engine.pid).children(recursive=True):
                child.kill()
        engine.kill()
        engine.wait(10)
        deadline = killed_s + (3.0 if watchdog == "on" else 1.5)
        while time.monotonic() < deadline and locked_devices(standin_nvml.log()):
            time.sleep(0.02)
    finally:
        if engine.poll() is None:
            engine.kill()
    entries = standin_nvml.log()
    if watchdog == "off":
        assert locked_devices(entries) == {0: 1410}  # what an operator met: clocks stay locked
        return
    resets = [e for e in entries if e.op == "reset" and e.ret == 0]
    assert len(resets) == 1 and resets[0].pid != engine.pid  # the watchdog, not the dead engine
    assert resets[0].t_s - killed_s < 1.0
    assert locked_devices(entries) == {}


def test_500_iterations_energy_is_sampled_off_the_engine_thread_and_sums_to_the_counter(
    standin_nvml: StandinNvml, recorder: HookRecorder
) -> None:
    """100 ms counter refresh, 5-30 ms iterations: energy comes from the sampler thread's reads, apportioned.

    Requests plus idle equal the counter delta the runtime saw exactly, that delta is the counter's own
    (within the refreshes during its start), and with the engine busy from start to close the requests alone
    are within 1% of it. The energy predictor learns apportioned energies, never the 0 J / whole-step noise of
    per-iteration reads."""
    import pynvml

    standin_nvml.script(refresh_ms=100, log_reads=1)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    try:
        before_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        start_began_s = time.monotonic()
        runtime = InstanceRuntime.start(_config(watchdog=False), Phase.DECODE, "n0")
        start_s = time.monotonic() - start_began_s
        learned: list[float] = []
        power_model = runtime._controllers[Phase.DECODE].power_model
        observe = power_model.observe_iteration

        def spy(snapshot: BatchSnapshot, clock_mhz: int, energy_j: float) -> bool:
            learned.append(energy_j)
            return observe(snapshot, clock_mhz, energy_j)

        power_model.observe_iteration = spy
        engine_tid = threading.get_native_id()
        loop_started_s = time.monotonic()
        rng = random.Random(7)
        running = [f"r{i}" for i in range(8)]
        serial = len(running)
        # The engine's own gaps between iterations (and before the first), measured around the calls: on a
        # loaded machine this thread can wait for a core or the GIL there, and that time is rightly idle.
        gaps_s, last_end_s = loop_started_s - start_began_s, loop_started_s
        for i in range(500):
            gaps_s += time.monotonic() - last_end_s
            runtime.before_iteration(_decode(time.time(), i, running))
            time.sleep(rng.uniform(0.005, 0.03))
            runtime.after_iteration()
            last_end_s = time.monotonic()
            if rng.random() < 0.2:  # one request leaves, another joins
                leaving = running.pop(rng.randrange(len(running)))
                runtime.request_finished(leaving, input_tokens=1, output_tokens=5, finish_time_s=time.time())
                running.append(f"r{serial}")
                serial += 1
        loop_ended_s = time.monotonic()
        for rid in running:
            runtime.request_finished(rid, input_tokens=1, output_tokens=5, finish_time_s=time.time())
        ledger = runtime._energy.ledger  # type: ignore[union-attr]
        runtime.close()
        gaps_s += time.monotonic() - last_end_s
        span_s = time.monotonic() - start_began_s
        after_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    finally:
        pynvml.nvmlShutdown()
    counter_j = (after_mj - before_mj) / 1000.0
    requests_j = sum(r.energy_j for r in recorder.requests)
    assert len(recorder.requests) == serial
    assert {r.energy_source for r in recorder.requests} == {EnergySource.MEASURED}
    assert requests_j + ledger.idle_j == pytest.approx(ledger.total_j, rel=1e-9)
    # the runtime's baseline came after our read: the refreshes during its start (250 W x 100 ms each) differ
    step_j = 250.0 * 0.1
    assert 0 <= counter_j - ledger.total_j <= step_j * (start_s // 0.1 + 1) + 1e-9
    # Busy from start to close: the requests get all but the idle gaps' share (idle draws less than a
    # running iteration, so at most their share of the time), within 1%. In a quiet run the gaps are ~0.
    assert requests_j <= ledger.total_j
    assert requests_j >= ledger.total_j * (0.99 - gaps_s / span_s), (gaps_s, span_s)
    assert len(learned) > 100 and min(learned) > 0.0  # no 0 J iterations taught to the predictor
    reads = [e for e in standin_nvml.log() if e.op == "energy" and loop_started_s <= e.t_s <= loop_ended_s]
    assert reads and all(e.tid != engine_tid for e in reads)  # not one read on the engine thread
    # about four reads per refresh period (the sampler's poll), not one or two per iteration
    assert len(reads) < 4.5 * (loop_ended_s - loop_started_s) / 0.1 + 2 < 2 * 500


def test_measured_request_energy_reaches_the_vllm_request_log(standin_nvml: StandinNvml, tmp_path) -> None:
    """The router's per-request energy (vLLM adapter) on a measured GPU: records settle on the sampler thread
    after the request left, so the log subscribes to them; before, it read the (None) return value and the
    runtime's removed meter, and the vLLM hook failed to attach."""
    import json

    from voltana.adapters.vllm.state import REQUESTS_FILE, RequestEnergyLog

    standin_nvml.script(refresh_ms=20)
    runtime = InstanceRuntime.start(_config(watchdog=False), Phase.DECODE, "n0")
    try:
        assert runtime.measures_energy
        log = RequestEnergyLog(tmp_path, engine_index=0)
        runtime.add_request_observer(log.add_record)
        _run(runtime, 20, ["a", "b"], step_s=0.005)
        assert (
            runtime.request_finished("a", input_tokens=1, output_tokens=20, finish_time_s=time.time()) is None
        )
        runtime.request_finished("b", input_tokens=1, output_tokens=20, finish_time_s=time.time())
        deadline = time.monotonic() + 5.0
        lines: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(lines) < 2:
            _run(runtime, 2, ["c"], step_s=0.01)  # keeps the engine ticking while the sampler settles a and b
            log.flush()
            path = tmp_path / REQUESTS_FILE.format(engine=0)
            lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    finally:
        runtime.close()
    assert sorted(str(entry["request_id"]) for entry in lines) == ["a", "b"]
    assert all(float(entry["energy_j"]) > 0.0 for entry in lines)  # type: ignore[arg-type]
