"""NVML power limits through the real ``pynvml`` ctypes layer and the stand-in ``libnvidia-ml.so.1``.

The stand-in logs every ``nvmlDeviceSetPowerManagementLimit`` (``op=power_limit``, the limit in mW) and keeps
the limit across processes (log replay), as a real GPU keeps it after the process that set it exits.
"""

from __future__ import annotations

import pytest

from tests.support.standin_nvml import StandinNvml, power_limits_mw
from voltana.hardware import nvml
from voltana.hardware.device import PowerLimits
from voltana.hardware.errors import InvalidArgumentError, NoPermissionError, NotSupportedError


def test_set_reads_back_and_reset_restores_the_default(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(device_count=2)
    group = nvml.open_nvidia()
    try:
        assert group.power_limits() == PowerLimits(400.0, 400.0, 100.0, 400.0)
        assert group.set_power_limit_w(250.0) == 250.0
        assert power_limits_mw(standin_nvml.log()) == {0: 250_000, 1: 250_000}
        assert group.power_limits().current_w == 250.0
        # the enforced limit (what bounds the energy counter's plausible jumps) follows the new limit
        assert [d._energy.max_power_w for d in group.devices] == [250.0, 250.0]  # type: ignore[attr-defined]
        group.reset_power_limit()
        assert power_limits_mw(standin_nvml.log()) == {
            0: 400_000,
            1: 400_000,
        }  # NVML: reset = set the default
        assert group.power_limits().current_w == 400.0
    finally:
        group.close()


def test_a_default_other_than_the_maximum_is_what_reset_restores(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(power_limit_default_mw=300_000, power_limit_max_mw=450_000, power_limit_mw=450_000)
    group = nvml.open_nvidia()
    try:
        assert group.set_power_limit_w(440.0) == 440.0
        group.reset_power_limit()
        assert power_limits_mw(standin_nvml.log()) == {0: 300_000}
    finally:
        group.close()


@pytest.mark.parametrize("limit_w", [50.0, 400.001, 1000.0])
def test_a_limit_outside_the_constraints_is_one_line_and_never_reaches_the_driver(
    standin_nvml: StandinNvml, limit_w: float
) -> None:
    group = nvml.open_nvidia()
    try:
        with pytest.raises(InvalidArgumentError) as caught:
            group.set_power_limit_w(limit_w)
        assert "\n" not in str(caught.value) and "100..400 W" in str(caught.value)
        assert standin_nvml.log() == []  # nothing was set
    finally:
        group.close()


def test_no_privilege_is_one_message_with_the_fix(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(set_power_limit="no_permission")
    group = nvml.open_nvidia()
    try:
        with pytest.raises(NoPermissionError) as caught:
            group.set_power_limit_w(250.0)
        message = str(caught.value)
        assert "\n" not in message
        assert "setting the power limit" in message and "CAP_SYS_ADMIN" in message
        assert "hardware.power_limit_w" in message  # the way out without the privilege
        assert power_limits_mw(standin_nvml.log()) == {}  # the refusal changed nothing
        assert group.power_limits().current_w == 400.0
    finally:
        group.close()


def test_a_gpu_without_power_management_says_not_supported(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(power_limit_default_mw=0)
    group = nvml.open_nvidia()
    try:
        with pytest.raises(NotSupportedError, match="reading the power limit failed"):
            group.power_limits()
    finally:
        group.close()


def test_a_limit_set_by_a_process_that_died_is_still_in_force(standin_nvml: StandinNvml) -> None:
    group = nvml.open_nvidia()
    group.set_power_limit_w(200.0)
    group.close()
    standin_nvml.library().voltana_standin_reset()  # a fresh process: state comes from the log only
    again = nvml.open_nvidia()
    try:
        assert again.power_limits().current_w == 200.0
    finally:
        again.close()
