"""ClockApplier: off the hot path, coalescing, restore on close / exit / SIGTERM, monitor-only on errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from voltana.hardware.applier import ClockApplier
from voltana.hardware.device import GpuGroup
from voltana.hardware.simulated import SimulatedGpu, open_simulated


def _device(group: GpuGroup) -> SimulatedGpu:
    device = group.devices[0]
    assert isinstance(device, SimulatedGpu)
    return device


def test_burst_of_1000_decisions_in_10_ms_makes_few_driver_calls_and_applies_the_last() -> None:
    group = open_simulated(driver_latency_s=0.002)  # a real clock change takes milliseconds
    clocks = group.supported_clocks_mhz()
    with ClockApplier(group) as applier:
        start = time.perf_counter()
        for i in range(1000):
            applier.submit(clocks[-1 - (i % 20)])
            while time.perf_counter() < start + (i + 1) * 10e-6:  # spread over ~10 ms
                pass
        last = clocks[-1 - (999 % 20)]
        assert applier.wait_applied(2.0)
        calls = _device(group).driver_calls
        assert applier.applied_clock_mhz == last == _device(group).locked_clock_mhz
        assert applier.applied_at_s is not None and applier.applied_at_s >= start
    assert 1 <= calls <= 20, calls


def test_repeats_are_skipped() -> None:
    group = open_simulated()
    with ClockApplier(group) as applier:
        for _ in range(100):
            applier.submit(1005)
            applier.wait_applied(1.0)
        assert _device(group).driver_calls == 1


def test_close_restores_default_clocks_on_every_tp_gpu(tmp_path: Path) -> None:
    group = open_simulated(model="llama-2-70b", state_dir=tmp_path)
    applier = ClockApplier(group)
    applier.submit(1095)
    assert applier.wait_applied(1.0)
    assert {d.current_clock_mhz() for d in group.devices} == {1095}
    applier.close()
    applier.close()  # idempotent
    for index in range(4):
        state = json.loads((tmp_path / f"gpu{index}.json").read_text())
        assert state == {"locked_clock_mhz": None, "power_limit_w": None, "events": ["lock 1095", "reset"]}


def test_untouched_clocks_are_not_reset() -> None:
    group = open_simulated()
    ClockApplier(group).close()
    assert _device(group).driver_calls == 0


class ExplodingGroup(GpuGroup):
    """A group whose driver fails with a non-voltana exception (a bug in a third-party driver)."""

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        raise RuntimeError("driver exploded")


def test_any_driver_error_means_monitor_only_never_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    group = ExplodingGroup(open_simulated().devices)
    with caplog.at_level(logging.ERROR, logger="voltana.hardware"), ClockApplier(group) as applier:
        applier.submit(1005)
        assert applier.wait_applied(1.0)
        applier.submit(1200)
        assert applier.monitor_only and applier.monitor_only_reason == "driver exploded"
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 1


CHILD = textwrap.dedent(
    """
    import sys, time
    from voltana.hardware.applier import ClockApplier
    from voltana.hardware.simulated import open_simulated

    applier = ClockApplier(open_simulated(state_dir=sys.argv[1]))
    applier.submit(1005)
    applier.wait_applied(5.0)
    print("ready", flush=True)
    time.sleep(30)
    """
)


@pytest.mark.parametrize("how", ["sigterm", "normal-exit"])
def test_process_end_restores_clocks(tmp_path: Path, how: str) -> None:
    code = CHILD if how == "sigterm" else CHILD.replace("time.sleep(30)", "")
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        if how == "sigterm":
            locked = json.loads((tmp_path / "gpu0.json").read_text())
            assert locked["locked_clock_mhz"] == 1005
            child.send_signal(signal.SIGTERM)
        returncode = child.wait(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    state = json.loads((tmp_path / "gpu0.json").read_text())
    assert state == {"locked_clock_mhz": None, "power_limit_w": None, "events": ["lock 1005", "reset"]}
    assert returncode == (-signal.SIGTERM if how == "sigterm" else 0)


def test_unsupported_clock_is_snapped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    group = open_simulated()
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"), ClockApplier(group) as applier:
        applier.submit(1007)
        assert applier.wait_applied(1.0)
        assert applier.applied_clock_mhz == 1005 and not applier.monitor_only
        applier.submit(1008)
        assert applier.wait_applied(1.0)
    assert sum("not a supported clock" in r.getMessage() for r in caplog.records) == 1


CRASHING_CHILD = textwrap.dedent(
    """
    import sys, time
    from voltana.core.config import HardwareConfig
    from voltana.hardware.applier import ClockApplier
    from voltana.hardware.simulated import open_simulated
    from voltana.hardware.watchdog import start_watchdog

    state_dir = sys.argv[1]
    watchdog = start_watchdog(HardwareConfig(vendor="simulated"), simulated_state_dir=state_dir)
    applier = ClockApplier(open_simulated(state_dir=state_dir), watchdog=watchdog)
    applier.submit(1005)
    applier.wait_applied(5.0)
    print("ready", flush=True)
    if sys.argv[2] == "close":
        applier.close()
        print("closed", flush=True)
    time.sleep(30)
    """
)


def _state_after(
    path: Path, done: Callable[[dict[str, object]], bool], timeout_s: float = 15.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        state: dict[str, object] = json.loads(path.read_text())
        if done(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


@pytest.mark.parametrize("ending", ["sigkill", "close-then-sigkill"])
def test_watchdog_restores_clocks_after_a_hard_crash_only(tmp_path: Path, ending: str) -> None:
    mode = "close" if ending == "close-then-sigkill" else "crash"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CHILD, str(tmp_path), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        if mode == "close":
            assert child.stdout.readline().strip() == "closed"
        child.kill()  # SIGKILL: no handler, no atexit
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    path = tmp_path / "gpu0.json"
    if mode == "crash":
        # The engine's own record still says 1005 until the watchdog reopens the device and resets it.
        state = _state_after(path, lambda s: s["events"] == ["reset"])
        assert state == {"locked_clock_mhz": None, "power_limit_w": None, "events": ["reset"]}
    else:
        time.sleep(0.5)
        assert json.loads(path.read_text()) == {
            "locked_clock_mhz": None,
            "power_limit_w": None,
            "events": ["lock 1005", "reset"],
        }
