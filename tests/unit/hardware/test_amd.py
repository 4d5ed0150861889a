"""The AMD driver against the real ``amdsmi`` Python package, vendor calls patched with autospec.

Without ROCm, ``import amdsmi`` fails because ``libamd_smi.so`` cannot be loaded. The fixture then imports
the real package with only that C library replaced (the vendor-call boundary): its Python API, enums and
exception classes are the real ones, and the API functions voltana calls are patched with autospec.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from unittest import mock

import pytest

from voltana.core.types import EnergySource
from voltana.hardware import amd
from voltana.hardware.device import PowerLimits
from voltana.hardware.errors import (
    GpuLostError,
    InvalidArgumentError,
    LibraryNotFoundError,
    NoPermissionError,
    NotSupportedError,
    VoltanaHardwareError,
)

VENDOR_CALLS = (
    "amdsmi_init",
    "amdsmi_get_processor_handles",
    "amdsmi_get_gpu_asic_info",
    "amdsmi_get_clk_freq",
    "amdsmi_set_gpu_clk_limit",
    "amdsmi_set_gpu_clk_range",
    "amdsmi_set_gpu_perf_level",
    "amdsmi_get_energy_count",
    "amdsmi_get_power_info",
    "amdsmi_get_power_cap_info",
    "amdsmi_set_power_cap",
)
_cached: dict[str, ModuleType] = {}


def _real_amdsmi_modules() -> dict[str, ModuleType]:
    """The real ``amdsmi`` package and submodules, imported over a stand-in ``libamd_smi.so`` if needed."""
    if _cached:
        return _cached
    before = set(sys.modules)
    real_cdll = ctypes.CDLL

    def cdll(name: Any, *args: Any, **kwargs: Any) -> Any:
        if str(name).endswith("libamd_smi.so"):
            try:
                return real_cdll(name, *args, **kwargs)
            except OSError:
                return mock.MagicMock(name="libamd_smi.so")
        return real_cdll(name, *args, **kwargs)

    with mock.patch.object(ctypes, "CDLL", cdll):
        import amdsmi  # noqa: F401
    for name in set(sys.modules) - before:
        if name == "amdsmi" or name.startswith("amdsmi."):
            _cached[name] = sys.modules.pop(name)
    return _cached


@pytest.fixture
def smi(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Real amdsmi in sys.modules for this test only; two GPUs whose API calls are autospec mocks."""
    for name, module in _real_amdsmi_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    module = sys.modules["amdsmi"]
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ROCR_VISIBLE_DEVICES", raising=False)
    with mock.patch.multiple(module, **dict.fromkeys(VENDOR_CALLS, mock.DEFAULT), autospec=True) as calls:
        calls["amdsmi_get_processor_handles"].return_value = ["h0", "h1"]
        calls["amdsmi_get_gpu_asic_info"].return_value = {"market_name": "AMD Instinct MI300X"}
        calls["amdsmi_get_clk_freq"].return_value = {
            "num_supported": 3,
            "current": 2,
            "frequency": [500_000_000, 1_500_000_000, 2_100_000_000],
        }
        calls["amdsmi_get_energy_count"].return_value = {
            "energy_accumulator": 0,
            "counter_resolution": 15.3,
            "timestamp": 0,
        }
        calls["amdsmi_get_power_info"].return_value = {
            "current_socket_power": 640,
            "average_socket_power": 600,
        }
        yield module, calls


def test_opens_gpus_and_reads_clock_range_in_mhz(smi: Any) -> None:
    group = amd.open_amd()
    assert len(group) == 2 and group.devices[0].name == "AMD Instinct MI300X"
    clocks = group.supported_clocks_mhz()
    assert clocks[0] == 500 and clocks[-1] == 2100 and 1505 in clocks
    assert group.current_clock_mhz() == 2100
    assert group.power_w() == pytest.approx(1280.0)


def test_hip_visible_devices_mapping(smi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    module, calls = smi
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    group = amd.open_amd()
    assert [d.index for d in group.devices] == [0]
    group.reset_clocks()
    calls["amdsmi_set_gpu_perf_level"].assert_called_once_with("h1", module.AmdSmiDevPerfLevel.AUTO)


def test_lock_uses_clock_limits_in_a_safe_order(smi: Any) -> None:
    _, calls = smi
    device = amd.open_amd([0]).devices[0]
    device.lock_clock_mhz(1200)  # lowering from 2100: min first, then max
    assert calls["amdsmi_set_gpu_clk_limit"].call_args_list == [
        mock.call("h0", "sclk", "min", 1200),
        mock.call("h0", "sclk", "max", 1200),
    ]


def test_lock_falls_back_to_clock_range(smi: Any) -> None:
    module, calls = smi
    newer_call = module.amdsmi_set_gpu_clk_limit
    del module.amdsmi_set_gpu_clk_limit  # an older amdsmi without the clock-limit call
    try:
        amd.open_amd([0]).devices[0].lock_clock_mhz(1200)
    finally:
        module.amdsmi_set_gpu_clk_limit = newer_call
    calls["amdsmi_set_gpu_clk_range"].assert_called_once_with("h0", 1200, 1200, module.AmdSmiClkType.GFX)


@pytest.mark.parametrize(
    ("status", "error", "advice"),
    [
        ("AMDSMI_STATUS_NO_PERM", NoPermissionError, "root"),
        ("AMDSMI_STATUS_NOT_SUPPORTED", NotSupportedError, "does not support"),
        ("AMDSMI_STATUS_NOT_FOUND", GpuLostError, "amd-smi list"),
        ("AMDSMI_STATUS_INVAL", InvalidArgumentError, "supported_clocks_mhz"),
        ("AMDSMI_STATUS_DRIVER_NOT_LOADED", LibraryNotFoundError, "amdgpu driver"),
        ("AMDSMI_STATUS_BUSY", VoltanaHardwareError, "amd-smi metric"),
    ],
)
def test_each_vendor_error_maps_to_voltana_with_advice(
    smi: Any, status: str, error: type[Exception], advice: str
) -> None:
    module, calls = smi
    code = getattr(module.amdsmi_wrapper, status)
    calls["amdsmi_set_gpu_clk_limit"].side_effect = module.AmdSmiLibraryException(code)
    device = amd.open_amd([0]).devices[0]
    with pytest.raises(error, match=advice) as caught:
        device.lock_clock_mhz(1200)
    assert "\n" not in str(caught.value) and status in str(caught.value)


@pytest.mark.parametrize(
    ("accumulators", "expected_j"),
    [
        ([1_000, 3_000], 2_000 * 15.3e-6),
        ([2**32 - 10, 5], 15 * 15.3e-6),  # the accumulator wrapped at 32 bits
        ([2**64 - 10, 5], 15 * 15.3e-6),
    ],
)
def test_energy_is_accumulator_times_resolution_with_wrap(
    smi: Any, accumulators: list[int], expected_j: float
) -> None:
    _, calls = smi
    calls["amdsmi_get_energy_count"].side_effect = [
        {"energy_accumulator": value, "counter_resolution": 15.3, "timestamp": 0} for value in accumulators
    ]
    device = amd.open_amd([0]).devices[0]  # opening reads the first value (the baseline)
    assert device.energy_j() == pytest.approx(expected_j)


@pytest.mark.parametrize(
    ("accumulators", "expected_units"),
    [
        # a 5-unit dip of a 32-bit accumulator (once read as a wrap, +65 kJ): a one-read glitch, measured
        # from the value before it when the next reading is above it
        ([2**31, 2**31 - 5, 2**31 + 995, 2**31 - 15, 2**31 + 1_995], [0, 995, 995, 1_995]),
        # firmware reset of a 64-bit accumulator (once read as a wrap, 2.8e14 J): re-based on the new value
        ([5_000_000_000, 1_200, 2_200, 1_190, 3_200], [0, 1_000, 1_000, 2_000]),
    ],
)
def test_accumulator_drop_counts_zero_and_rebases_with_one_warning(
    smi: Any, accumulators: list[int], expected_units: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    _, calls = smi
    calls["amdsmi_get_energy_count"].side_effect = [
        {"energy_accumulator": value, "counter_resolution": 15.3, "timestamp": 0} for value in accumulators
    ]
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = amd.open_amd([0]).devices[0]
        totals = [device.energy_j() for _ in expected_units]
    assert totals == pytest.approx([units * 15.3e-6 for units in expected_units])
    drops = [r for r in caplog.records if "went backward" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.WARNING


def test_lock_order_follows_the_applied_limits_when_the_gpu_throttles(smi: Any) -> None:
    """Locked at 2100, throttled to 1900, then locking 2000: min must be written first (min=2100 applied)."""
    module, calls = smi
    limits = {"min": 500, "max": 2100}

    def set_limit(handle: Any, clk_type: str, limit: str, value: int) -> None:
        proposed = {**limits, limit: value}
        if proposed["min"] > proposed["max"]:  # the driver refuses min > max, as amdgpu does
            raise module.AmdSmiLibraryException(module.amdsmi_wrapper.AMDSMI_STATUS_INVAL)
        limits[limit] = value

    calls["amdsmi_set_gpu_clk_limit"].side_effect = set_limit
    frequency = [500_000_000, 1_500_000_000, 1_900_000_000, 2_000_000_000, 2_100_000_000]
    calls["amdsmi_get_clk_freq"].return_value = {"num_supported": 5, "current": 4, "frequency": frequency}
    device = amd.open_amd([0]).devices[0]
    device.lock_clock_mhz(2100)
    assert limits == {"min": 2100, "max": 2100}
    calls["amdsmi_get_clk_freq"].return_value = {"num_supported": 5, "current": 2, "frequency": frequency}
    assert device.current_clock_mhz() == 1900  # thermal throttling below the locked range
    device.lock_clock_mhz(2000)
    assert limits == {"min": 2000, "max": 2000}
    assert calls["amdsmi_set_gpu_clk_limit"].call_args_list[-2:] == [
        mock.call("h0", "sclk", "min", 2000),
        mock.call("h0", "sclk", "max", 2000),
    ]


def test_without_rocm_import_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        amd.load_amdsmi()
    except LibraryNotFoundError as exc:
        message = str(exc)
    else:
        pytest.skip("ROCm's libamd_smi.so is installed here")
    assert message.startswith("AMD SMI unavailable: ") and "\n" not in message
    assert capsys.readouterr().out == ""  # the vendor's print is swallowed into the message
    assert "amdsmi" not in sys.modules


def test_missing_energy_counter_integrates_socket_power(smi: Any, caplog: pytest.LogCaptureFixture) -> None:
    """amdsmi_get_energy_count NOT_SUPPORTED: clock control stays, energy comes from amdsmi_get_power_info."""
    module, calls = smi
    not_supported = module.AmdSmiLibraryException(module.amdsmi_wrapper.AMDSMI_STATUS_NOT_SUPPORTED)
    calls["amdsmi_get_energy_count"].side_effect = not_supported
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        group = amd.open_amd([0])
        first = group.read_energy()
        second = group.read_energy()
        group.lock_clock_mhz(1505)
    assert first.source is second.source is EnergySource.POWER_INTEGRATED
    assert first.energy_j is not None and second.energy_j is not None
    elapsed_s = second.monotonic_s - first.monotonic_s
    assert second.energy_j - first.energy_j == pytest.approx(640.0 * elapsed_s, rel=1e-6)
    assert calls["amdsmi_set_gpu_clk_limit"].call_count == 2
    assert sum("integrating power" in r.getMessage() for r in caplog.records) == 1


MI300X_CAPS_UW = {  # microwatts, as amdsmi reports them on Linux bare metal
    "power_cap": 750_000_000,
    "default_power_cap": 750_000_000,
    "dpm_cap": 2100,
    "min_power_cap": 0,
    "max_power_cap": 750_000_000,
}


def _stateful_power_cap(smi: Any, caps: dict[str, int]) -> list[tuple[Any, int]]:
    """amdsmi_get_power_cap_info / amdsmi_set_power_cap over one cap per handle; returns the sets made."""
    module, calls = smi
    state = {"h0": dict(caps), "h1": dict(caps)}
    sets: list[tuple[Any, int]] = []

    def set_cap(handle: Any, sensor_ind: int, cap: int) -> None:
        assert sensor_ind == 0
        if not caps["min_power_cap"] <= cap <= caps["max_power_cap"]:
            raise module.AmdSmiLibraryException(module.amdsmi_wrapper.AMDSMI_STATUS_INVAL)
        state[handle]["power_cap"] = cap
        sets.append((handle, cap))

    calls["amdsmi_get_power_cap_info"].side_effect = lambda handle: dict(state[handle])
    calls["amdsmi_set_power_cap"].side_effect = set_cap
    return sets


def test_power_cap_set_reads_back_and_resets_in_microwatts(smi: Any) -> None:
    sets = _stateful_power_cap(smi, {**MI300X_CAPS_UW, "min_power_cap": 200_000_000})
    group = amd.open_amd()
    assert group.power_limits() == PowerLimits(750.0, 750.0, 200.0, 750.0)
    assert group.set_power_limit_w(500.0) == 500.0
    assert sets == [("h0", 500_000_000), ("h1", 500_000_000)]
    assert group.power_limits().current_w == 500.0
    group.reset_power_limit()
    assert sets[-2:] == [("h0", 750_000_000), ("h1", 750_000_000)]
    assert group.power_limits().current_w == 750.0


def test_power_cap_in_watts_from_a_host_build_is_set_in_watts(smi: Any) -> None:
    sets = _stateful_power_cap(
        smi,
        {
            "power_cap": 750,
            "default_power_cap": 750,
            "dpm_cap": 0,
            "min_power_cap": 100,
            "max_power_cap": 750,
        },
    )
    device = amd.open_amd([0]).devices[0]
    assert device.set_power_limit_w(600.0) == 600.0
    assert sets == [("h0", 600)]


def test_power_cap_outside_the_range_is_one_line_and_sets_nothing(smi: Any) -> None:
    sets = _stateful_power_cap(smi, {**MI300X_CAPS_UW, "min_power_cap": 200_000_000})
    device = amd.open_amd([0]).devices[0]
    with pytest.raises(InvalidArgumentError) as caught:
        device.set_power_limit_w(150.0)
    assert "\n" not in str(caught.value) and "200..750 W" in str(caught.value)
    assert sets == []


def test_power_cap_without_root_is_one_message(smi: Any) -> None:
    module, calls = smi
    calls["amdsmi_get_power_cap_info"].return_value = dict(MI300X_CAPS_UW)
    calls["amdsmi_set_power_cap"].side_effect = module.AmdSmiLibraryException(
        module.amdsmi_wrapper.AMDSMI_STATUS_NO_PERM
    )
    device = amd.open_amd([0]).devices[0]
    with pytest.raises(NoPermissionError) as caught:
        device.set_power_limit_w(500.0)
    message = str(caught.value)
    assert "\n" not in message and "AMDSMI_STATUS_NO_PERM" in message
    assert "setting the power cap needs root" in message and "hardware.power_limit_w" in message
