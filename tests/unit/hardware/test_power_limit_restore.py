"""A static power limit (``hardware.power_limit_w``) is set with the clock applier and given back wherever the
clocks are: on close, at exit, on SIGTERM and, after a SIGKILL, by the watchdog. A refusal is one message."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.standin_nvml import StandinNvml, locked_devices, power_limits_mw
from voltana.hardware import nvml
from voltana.hardware.applier import ClockApplier
from voltana.hardware.simulated import open_simulated


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_close_restores_the_default_limit_on_every_tp_gpu(tmp_path: Path) -> None:
    group = open_simulated("a100-80gb", "llama-2-70b", tp=2, state_dir=tmp_path)
    with ClockApplier(group, power_limit_w=250.0) as applier:
        assert applier.applied_power_limit_w == 250.0
        assert group.power_limits().current_w == 250.0
        applier.submit(1095)
        assert applier.wait_applied(2.0)
    for gpu in ("gpu0.json", "gpu1.json"):
        state = json.loads((tmp_path / gpu).read_text())
        assert state["power_limit_w"] is None and state["locked_clock_mhz"] is None
        assert state["events"] == ["power_limit 250", "lock 1095", "reset", "power_reset"]


def test_no_limit_configured_touches_nothing(tmp_path: Path) -> None:
    group = open_simulated(state_dir=tmp_path)
    with ClockApplier(group) as applier:
        applier.submit(1095)
        assert applier.wait_applied(2.0)
    assert json.loads((tmp_path / "gpu0.json").read_text())["events"] == ["lock 1095", "reset"]


def test_an_out_of_range_limit_is_one_error_line_and_clocks_still_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = open_simulated(state_dir=tmp_path)
    with (
        caplog.at_level(logging.INFO, logger="voltana.hardware"),
        ClockApplier(group, power_limit_w=40.0) as applier,
    ):
        applier.submit(1095)
        assert applier.wait_applied(2.0)
        assert applier.applied_clock_mhz == 1095 and not applier.monitor_only
        assert applier.applied_power_limit_w is None
    errors = _errors(caplog)
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "power_limit_w = 40 W NOT set" in errors[0] and "100..400 W" in errors[0]
    assert json.loads((tmp_path / "gpu0.json").read_text())["events"] == ["lock 1095", "reset"]


def test_no_privilege_is_one_message_and_clock_control_goes_on(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    standin_nvml.script(device_count=2, set_power_limit="no_permission")
    group = nvml.open_nvidia()
    try:
        with (
            caplog.at_level(logging.INFO, logger="voltana.hardware"),
            ClockApplier(group, power_limit_w=250.0) as applier,
        ):
            applier.submit(1005)
            assert applier.wait_applied(2.0)
            assert applier.applied_clock_mhz == 1005 and not applier.monitor_only
        errors = _errors(caplog)
        assert len(errors) == 1, errors  # the refused set; the quiet reset at close adds nothing
        assert "setting the power limit" in errors[0] and "CAP_SYS_ADMIN" in errors[0]
        assert power_limits_mw(standin_nvml.log()) == {}  # every attempt was refused: nothing changed
        assert locked_devices(standin_nvml.log()) == {}  # the clocks were restored as usual
    finally:
        group.close()


def test_a_real_nvml_limit_is_set_and_restored(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(device_count=2)
    group = nvml.open_nvidia()
    try:
        applier = ClockApplier(group, power_limit_w=300.0)
        assert applier.applied_power_limit_w == 300.0
        assert power_limits_mw(standin_nvml.log()) == {0: 300_000, 1: 300_000}
        applier.close()
        assert power_limits_mw(standin_nvml.log()) == {0: 400_000, 1: 400_000}
    finally:
        group.close()


SIGTERM_CHILD = textwrap.dedent(
    """
    import sys, time
    from voltana.hardware.applier import ClockApplier
    from voltana.hardware.simulated import open_simulated

    applier = ClockApplier(open_simulated(state_dir=sys.argv[1]), power_limit_w=250.0)
    print("ready", flush=True)
    time.sleep(30)
    """
)


def test_sigterm_restores_the_limit(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert json.loads((tmp_path / "gpu0.json").read_text())["power_limit_w"] == 250.0
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
    state = json.loads((tmp_path / "gpu0.json").read_text())
    assert state["power_limit_w"] is None and state["events"] == ["power_limit 250", "power_reset"]


KILLED_NVML_ENGINE = textwrap.dedent(
    """
    import time
    from voltana.core.config import HardwareConfig
    from voltana.hardware.applier import ClockApplier
    from voltana.hardware.nvml import open_nvidia
    from voltana.hardware.watchdog import start_watchdog

    hardware = HardwareConfig(vendor="nvidia", power_limit_w=250.0)
    watchdog = start_watchdog(hardware)
    applier = ClockApplier(open_nvidia(), watchdog=watchdog, power_limit_w=hardware.power_limit_w)
    applier.submit(1005)
    applier.wait_applied(5.0)
    watchdog.wait_ready(60)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_the_watchdog_restores_the_limit_after_a_sigkill(standin_nvml: StandinNvml) -> None:
    """The engine (a real pynvml over the stand-in, through LD_LIBRARY_PATH) is SIGKILLed holding a 250 W
    limit and a locked clock: the watchdog process restores both, and the log says it was not the engine."""
    env = standin_nvml.env(dict(os.environ))
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_NVML_ENGINE], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert power_limits_mw(standin_nvml.log()) == {0: 250_000}
        child.kill()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    deadline = time.monotonic() + 20
    while power_limits_mw(standin_nvml.log()) != {0: 400_000} and time.monotonic() < deadline:
        time.sleep(0.05)
    entries = standin_nvml.log()
    assert power_limits_mw(entries) == {0: 400_000} and locked_devices(entries) == {}
    restore = [e for e in entries if e.op == "power_limit" and e.max_mhz == 400_000]
    assert len(restore) == 1 and restore[0].pid != child.pid  # the watchdog did it, not the engine


def test_the_watchdog_does_not_report_a_failure_for_a_gpu_without_power_limits(
    standin_nvml: StandinNvml,
) -> None:
    """A GPU with no settable limit: the engine's set was refused (NOT_SUPPORTED, one ERROR), so after a
    SIGKILL the watchdog restores the clocks and has no power limit to restore: a success, not an error."""
    standin_nvml.script(power_limit_default_mw=0)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_NVML_ENGINE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=standin_nvml.env(dict(os.environ)),
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.kill()
        child.wait(timeout=10)
        assert child.stderr is not None
        stderr = child.stderr.read()  # end of file once the watchdog (which shares it) has exited
    finally:
        if child.poll() is None:
            child.kill()
    assert "power_limit_w = 250 W NOT set" in stderr  # the engine's one ERROR at start
    assert "the engine died; GPU clocks and power limit reset to the driver default" in stderr
    assert "could not be reset" not in stderr
    assert locked_devices(standin_nvml.log()) == {}
