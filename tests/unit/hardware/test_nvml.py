"""The NVML driver against the real ``pynvml`` module, vendor calls patched with autospec."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pynvml
import pytest

from voltana.hardware import nvml
from voltana.hardware.applier import ClockApplier
from voltana.hardware.device import EnergyCounter
from voltana.hardware.errors import (
    GpuLostError,
    InvalidArgumentError,
    LibraryNotFoundError,
    NoPermissionError,
    NotSupportedError,
    VoltanaHardwareError,
)

VENDOR_CALLS = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetSupportedMemoryClocks",
    "nvmlDeviceGetSupportedGraphicsClocks",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceSetGpuLockedClocks",
    "nvmlDeviceResetGpuLockedClocks",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetPowerUsage",
)
A100_CLOCKS = list(range(1410, 209, -15))  # NVML lists them descending


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Patch every NVML entry point voltana calls (autospec: wrong arity fails), two A100s present."""
    monkeypatch.setattr(nvml, "_init_count", 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with mock.patch.multiple(pynvml, **dict.fromkeys(VENDOR_CALLS, mock.DEFAULT), autospec=True) as calls:
        calls["nvmlDeviceGetCount"].return_value = 2
        calls["nvmlDeviceGetHandleByIndex"].side_effect = lambda index: f"handle{index}"
        calls["nvmlDeviceGetHandleByUUID"].side_effect = lambda uuid: f"handle-{uuid}"
        calls["nvmlDeviceGetName"].return_value = "NVIDIA A100-SXM4-80GB"
        calls["nvmlDeviceGetSupportedMemoryClocks"].return_value = [1593]
        calls["nvmlDeviceGetSupportedGraphicsClocks"].return_value = A100_CLOCKS
        calls["nvmlDeviceGetClockInfo"].return_value = 1410
        calls["nvmlDeviceGetTotalEnergyConsumption"].return_value = 0
        calls["nvmlDeviceGetPowerUsage"].return_value = 250_000
        calls["nvmlDeviceGetEnforcedPowerLimit"].return_value = 400_000
        calls["nvmlDeviceGetUUID"].side_effect = lambda handle: f"GPU-{handle}"
        yield calls


def test_opens_visible_gpus_and_reads_supported_clocks(fake_nvml: Any) -> None:
    group = nvml.open_nvidia()
    assert len(group) == 2
    assert group.supported_clocks_mhz()[0] == 210 and group.max_clock_mhz() == 1410
    fake_nvml["nvmlDeviceGetSupportedGraphicsClocks"].assert_called_with("handle1", 1593)
    assert group.power_w() == pytest.approx(500.0)
    fake_nvml["nvmlShutdown"].assert_not_called()  # each open device holds an NVML reference
    group.close()
    fake_nvml["nvmlInit"].assert_called_once_with()
    fake_nvml["nvmlShutdown"].assert_called_once_with()


def test_cuda_visible_devices_maps_indices_and_uuids(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    group = nvml.open_nvidia()
    assert [d.index for d in group.devices] == [0]
    fake_nvml["nvmlDeviceGetHandleByIndex"].assert_called_once_with(1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    nvml.open_nvidia()
    fake_nvml["nvmlDeviceGetHandleByUUID"].assert_called_once_with("GPU-1234")


def test_invisible_index_is_a_clear_error(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(VoltanaHardwareError, match=r"index 1 is not visible .*device_indices"):
        nvml.open_nvidia([1])


def test_lock_sets_min_and_max_and_reads_back(fake_nvml: Any) -> None:
    group = nvml.open_nvidia([0])
    fake_nvml["nvmlDeviceGetClockInfo"].return_value = 1005
    assert group.lock_clock_mhz(1005) == 1005
    fake_nvml["nvmlDeviceSetGpuLockedClocks"].assert_called_once_with("handle0", 1005, 1005)
    fake_nvml["nvmlDeviceGetClockInfo"].assert_called_with("handle0", pynvml.NVML_CLOCK_SM)
    group.reset_clocks()
    fake_nvml["nvmlDeviceResetGpuLockedClocks"].assert_called_once_with("handle0")


@pytest.mark.parametrize(
    ("code", "error", "advice"),
    [
        (pynvml.NVML_ERROR_NO_PERMISSION, NoPermissionError, "CAP_SYS_ADMIN"),
        (pynvml.NVML_ERROR_NOT_SUPPORTED, NotSupportedError, "does not support"),
        (pynvml.NVML_ERROR_GPU_IS_LOST, GpuLostError, "nvidia-smi"),
        (pynvml.NVML_ERROR_INVALID_ARGUMENT, InvalidArgumentError, "supported_clocks_mhz"),
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, LibraryNotFoundError, "simulated"),
        (pynvml.NVML_ERROR_UNKNOWN, VoltanaHardwareError, "nvidia-smi -q"),
    ],
)
def test_each_vendor_error_maps_to_voltana_with_advice(
    fake_nvml: Any, code: int, error: type[Exception], advice: str
) -> None:
    group = nvml.open_nvidia([0])
    fake_nvml["nvmlDeviceSetGpuLockedClocks"].side_effect = pynvml.NVMLError(code)
    with pytest.raises(error, match=advice) as caught:
        group.lock_clock_mhz(1005)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value.__cause__, pynvml.NVMLError)


def test_missing_driver_at_init(fake_nvml: Any) -> None:
    fake_nvml["nvmlInit"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(LibraryNotFoundError, match=r"hardware\.vendor=simulated"):
        nvml.open_nvidia()


@pytest.mark.parametrize(
    ("readings_mj", "expected_j"),
    [
        ([1_000, 3_500], 2.5),
        ([2**64 - 1_000, 500], 1.5),  # 64-bit counter wrap (NVML's counter is 64-bit mJ)
        ([5_000_000_000, 1_200], 0.0),  # driver reset: 0 J, not a wrap (was 1.8e16 J)
        ([1_000_000, 999_990], 0.0),  # a 10 mJ dip (was +1.8e16 J)
        ([2**32 - 100, 50], 0.0),  # a drop below 2**32 is no wrap either on a 64-bit counter
    ],
)
def test_energy_counter_wraps_only_by_width(readings_mj: list[int], expected_j: float) -> None:
    counter = EnergyCounter(joules_per_unit=1e-3)  # as NvmlGpu builds it: mJ, 64 bits
    counter.update(readings_mj[0])
    assert counter.update(readings_mj[1]) == pytest.approx(expected_j)


def test_driver_counter_drop_rebases(fake_nvml: Any) -> None:
    readings = [5_000_000_000, 1_200, 2_200]
    fake_nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = [*readings, 2_200, 2_200]
    device = nvml.open_nvidia([0]).devices[0]  # opening reads the first value (the baseline)
    totals = [device.energy_j() for _ in range(3)]
    assert totals[-1] == pytest.approx(1.0)  # 0 J for the drop, then 1200 -> 2200 mJ


def test_permission_denied_puts_the_applier_in_monitor_only_mode(
    fake_nvml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml["nvmlDeviceSetGpuLockedClocks"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    reasons: list[str] = []
    applier = ClockApplier(nvml.open_nvidia(), on_monitor_only=reasons.append)
    with caplog.at_level(logging.ERROR, logger="voltana.hardware"):
        applier.submit(1005)
        assert applier.wait_applied(2.0)
        for clock in (1095, 1200, 1305):
            applier.submit(clock)  # ignored: never raises, never calls the driver again
        applier.close()
    assert applier.monitor_only and "CAP_SYS_ADMIN" in applier.monitor_only_reason
    assert reasons == [applier.monitor_only_reason]
    assert fake_nvml["nvmlDeviceSetGpuLockedClocks"].call_count == 1
    assert sum("monitoring only" in r.getMessage() for r in caplog.records) == 1
    assert applier.applied_clock_mhz is None


def test_read_back_mismatch_is_recorded_and_warned_once(
    fake_nvml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml["nvmlDeviceGetClockInfo"].return_value = 1350  # the driver arbitrates (power/thermal)
    with (
        caplog.at_level(logging.WARNING, logger="voltana.hardware"),
        ClockApplier(nvml.open_nvidia()) as applier,
    ):
        applier.submit(1410)
        assert applier.wait_applied(2.0)
        applier.submit(1395)
        assert applier.wait_applied(2.0)
        assert applier.locked_clock_mhz == 1395  # asked of the driver
        assert applier.applied_clock_mhz == applier.read_back_clock_mhz == 1350  # what the GPU runs at
    assert sum("reads back" in r.getMessage() for r in caplog.records) == 1
    assert fake_nvml["nvmlDeviceResetGpuLockedClocks"].call_count == 2  # restored on close, both GPUs


def test_real_pynvml_without_a_driver_reports_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present on this machine")
    monkeypatch.setattr(nvml, "_init_count", 0)
    with pytest.raises(LibraryNotFoundError, match=r"^NVML initialisation failed: .*simulated"):
        nvml.open_nvidia()


class _Ticks:
    """A clock advancing ``step_s`` per call (the energy sampler reads every 25 ms)."""

    def __init__(self, step_s: float = 0.025) -> None:
        self.now_s = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


P_MJ = 5_000_000_000  # a counter 5 MJ into its life


@pytest.mark.parametrize(
    ("readings_mj", "expected_j"),
    [
        ([P_MJ, P_MJ + 100, 0, 0, P_MJ + 200], 0.2),  # QA: 5,000,000.3 J
        ([P_MJ, P_MJ + 100_000, 0, 0, 0, 0, P_MJ + 425_000], 425.0),  # one bad refresh read 4 times
        ([P_MJ, 1_000, 1_100, 1_200, P_MJ + 425_000], 425.0),  # low readings that move are a glitch too
    ],
)
def test_a_multi_read_drop_that_recovers_is_measured_from_the_pre_drop_value(
    readings_mj: list[int], expected_j: float
) -> None:
    counter = EnergyCounter(joules_per_unit=1e-3, widths_bits=(64,), max_power_w=400.0, clock=_Ticks())
    totals = [counter.update(raw) for raw in readings_mj]
    assert totals[-1] == pytest.approx(expected_j)
    assert totals == sorted(totals)  # cumulative joules never decrease


def test_an_implausible_jump_is_bounded_by_the_power_limit_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = EnergyCounter(joules_per_unit=1e-3, max_power_w=400.0, clock=_Ticks(0.025))
    # a drop to 0 that lasts past the glitch window (a reset), then back at 5 MJ: 0.025 s can hold 10 J
    readings = [P_MJ] + [0] * (EnergyCounter.GLITCH_READS + 2) + [P_MJ + 425_000, P_MJ + 435_000]
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        totals = [counter.update(raw) for raw in readings]
    assert totals[-2] == pytest.approx(400.0 * 0.025)  # bounded by limit x elapsed, not 5,000,425 J
    assert totals[-1] == pytest.approx(totals[-2] + 10.0)  # and measured normally afterwards
    assert counter.glitches == 1
    assert len([r for r in caplog.records if "power limit" in r.getMessage()]) == 1


def test_a_genuine_reset_stays_rebased() -> None:
    counter = EnergyCounter(joules_per_unit=1e-3, max_power_w=400.0, clock=_Ticks())
    readings = [P_MJ, 1_200] + [1_200 + 1_000 * i for i in range(1, 30)]
    totals = [counter.update(raw) for raw in readings]
    assert totals[-1] == pytest.approx(29.0)  # counts from the new base, past the glitch window too


def test_an_unsupported_energy_counter_gets_no_clock_locking_hint(
    fake_nvml: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: the energy fallback WARNING said "(locked clocks need Volta+ and driver >= 440)"."""
    fake_nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = pynvml.NVMLError(
        pynvml.NVML_ERROR_NOT_SUPPORTED
    )
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        group = nvml.open_nvidia([0])
    fallback = [r.getMessage() for r in caplog.records if "integrating power" in r.getMessage()]
    assert len(fallback) == 1 and "reading the energy counter" in fallback[0] and "Volta" not in fallback[0]
    fake_nvml["nvmlDeviceSetGpuLockedClocks"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    with pytest.raises(NotSupportedError, match=r"locked clocks need Volta\+"):
        group.lock_clock_mhz(1005)
