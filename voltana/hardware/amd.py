"""AMD driver on ROCm's ``amdsmi``: SCLK range/limit, perf level AUTO to reset, power cap, energy, power.

Named ``amd.py`` so that nothing here can be mistaken for the vendor module ``amdsmi``. Importing ``amdsmi``
without ROCm raises (``KeyError``/``OSError``) and prints to stdout: :func:`load_amdsmi` imports it guarded,
swallows the print and raises :class:`LibraryNotFoundError` starting with "AMD SMI unavailable: ...".
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from voltana.hardware.device import (
    MAX_GPU_POWER_W,
    DeviceCapabilities,
    EnergyCounter,
    EnergySource,
    GpuDevice,
    GpuGroup,
    PowerLimits,
    has_clock_privilege,
    visible_device_map,
)
from voltana.hardware.errors import (
    DeviceIndexError,
    GpuLostError,
    InvalidArgumentError,
    LibraryNotFoundError,
    NoPermissionError,
    NotSupportedError,
    VoltanaHardwareError,
    vendor_call,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")
CLOCK_GRID_MHZ = 15  # clocks offered between the device's SCLK min and max (amdsmi accepts any MHz value)


def load_amdsmi() -> Any:
    """The ``amdsmi`` module, or :class:`LibraryNotFoundError` ("AMD SMI unavailable: ...")."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            import amdsmi
    except (ImportError, KeyError, OSError) as exc:
        printed = [line.strip() for line in captured.getvalue().splitlines() if line.strip()]
        reason = printed[0] if printed else f"{type(exc).__name__}: {exc}"
        raise LibraryNotFoundError(
            f"AMD SMI unavailable: {reason}; install ROCm's amd-smi-lib or use hardware.vendor=simulated"
        ) from None
    return amdsmi


def map_amdsmi_error(exc: Exception, action: str) -> VoltanaHardwareError:
    """The voltana exception for an ``amdsmi`` exception raised while doing ``action``."""
    amdsmi = load_amdsmi()
    wrapper = amdsmi.amdsmi_wrapper
    code = exc.get_error_code() if hasattr(exc, "get_error_code") else None
    where = f"AMD SMI {action} failed: {' '.join(str(exc).split())}"
    power_limit = "power limit" in action
    if code == wrapper.AMDSMI_STATUS_NO_PERM:
        if power_limit:
            return NoPermissionError(
                f"{where}; setting the power cap needs root: run the engine as root, or leave "
                "hardware.power_limit_w empty (the driver's default cap stays)"
            )
        return NoPermissionError(
            f"{where}; setting clocks needs root: run the engine as root or monitor only"
        )
    if code in (wrapper.AMDSMI_STATUS_NOT_SUPPORTED, wrapper.AMDSMI_STATUS_NOT_YET_IMPLEMENTED):
        return NotSupportedError(f"{where}; this GPU or driver does not support it")
    if code in (
        wrapper.AMDSMI_STATUS_DRIVER_NOT_LOADED,
        wrapper.AMDSMI_STATUS_FAIL_LOAD_MODULE,
        wrapper.AMDSMI_STATUS_NO_DRV,
    ):
        return LibraryNotFoundError(f"{where}; the amdgpu driver is not loaded: load it or use simulated")
    if code == wrapper.AMDSMI_STATUS_NOT_FOUND:
        return GpuLostError(f"{where}; the GPU is gone: check `amd-smi list` and dmesg")
    if code in (wrapper.AMDSMI_STATUS_INVAL, wrapper.AMDSMI_STATUS_INPUT_OUT_OF_BOUNDS):
        if power_limit:
            return InvalidArgumentError(f"{where}; pass a limit inside power_limits() (min_w..max_w)")
        return InvalidArgumentError(f"{where}; pass a clock from supported_clocks_mhz()")
    return VoltanaHardwareError(f"{where}; see `amd-smi metric` for the device state")


def _amd_call(action: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator: map ``amdsmi.AmdSmiException`` raised inside to voltana's hierarchy."""
    return vendor_call(lambda: load_amdsmi().AmdSmiException, map_amdsmi_error, action)


def _to_mhz(value: float) -> int:
    """amdsmi reports frequencies in Hz; tolerate MHz from older builds."""
    return round(value / 1e6) if value > 100_000 else int(value)


POWER_CAP_SENSOR = 0  # amdsmi_set_power_cap's sensor index: the GPU's (socket) power cap
MICROWATT_W = 1e-6


def _power_cap_unit_w(info: dict[str, Any]) -> float:
    """Watts per unit of ``amdsmi_get_power_cap_info``: microwatts on Linux bare metal, watts where the
    library runs on a virtualisation host (``amdsmi.h``, ``amdsmi_power_cap_info_t``). A default cap above
    10,000 units is microwatts: 10 kW is no GPU's cap, and neither is 10 mW."""
    return MICROWATT_W if float(info["default_power_cap"]) > 10_000 else 1.0


class AmdGpu(GpuDevice):
    """One AMD GPU through ``amdsmi`` (``handle`` from ``amdsmi_get_processor_handles``)."""

    vendor = "amd"
    # amdsmi does not document how often the energy accumulator is refreshed; sample no faster than NVML's
    # ~100 ms (Yang et al., arXiv 2312.02741) until scripts/gpu_readonly_check.sh-style measurements exist.
    energy_refresh_s = 0.1

    def __init__(self, index: int, handle: Any) -> None:
        self._smi = load_amdsmi()
        self._handle = handle
        super().__init__(index, self._read_name())
        self._energy: EnergyCounter | None = None
        self._clocks: tuple[int, ...] | None = None
        self._limits_mhz: tuple[int, int] | None = None  # the (min, max) SCLK limits voltana last applied
        self.read_energy()  # baseline, and finds out now (one WARNING) whether the counter works

    @_amd_call("reading the device name")
    def _read_name(self) -> str:
        info = self._smi.amdsmi_get_gpu_asic_info(self._handle)
        return str(info.get("market_name", "AMD GPU"))

    @_amd_call("reading supported clocks")
    def supported_clocks_mhz(self) -> tuple[int, ...]:
        if self._clocks is None:
            freq = self._smi.amdsmi_get_clk_freq(self._handle, self._smi.AmdSmiClkType.GFX)
            levels = sorted(_to_mhz(f) for f in freq["frequency"])
            low, high = levels[0], levels[-1]
            self._clocks = tuple(sorted({*range(low, high, CLOCK_GRID_MHZ), high}))
        return self._clocks

    @_amd_call("reading the SCLK")
    def current_clock_mhz(self) -> int:
        freq = self._smi.amdsmi_get_clk_freq(self._handle, self._smi.AmdSmiClkType.GFX)
        return _to_mhz(freq["frequency"][freq["current"]])

    @_amd_call("setting the SCLK range")
    def lock_clock_mhz(self, clock_mhz: int) -> int:
        smi = self._smi
        if hasattr(smi, "amdsmi_set_gpu_clk_limit"):
            self._write_limits(clock_mhz)
        else:
            smi.amdsmi_set_gpu_clk_range(self._handle, clock_mhz, clock_mhz, smi.AmdSmiClkType.GFX)
        self._limits_mhz = (clock_mhz, clock_mhz)
        return self.current_clock_mhz()

    def _write_limits(self, clock_mhz: int) -> None:
        """Write max and min so that min <= max holds after each write.

        The order comes from the limits applied last, not from the clock the GPU runs at: a GPU locked at
        2100 MHz that throttles to 1900 still has min = 2100, so locking 2000 must write min first. Before
        voltana's first write the limits are unknown: the current clock is the best guess, and an INVAL
        answer is retried once in the other order.
        """
        if self._limits_mhz is not None:
            raising = clock_mhz >= self._limits_mhz[0]
        else:
            raising = clock_mhz >= self.current_clock_mhz()
        order = ("max", "min") if raising else ("min", "max")
        try:
            self._set_limit(order[0], clock_mhz)
        except self._smi.AmdSmiException as exc:
            code = exc.get_error_code() if hasattr(exc, "get_error_code") else None
            if self._limits_mhz is not None or code != self._smi.amdsmi_wrapper.AMDSMI_STATUS_INVAL:
                raise
            order = (order[1], order[0])
            self._set_limit(order[0], clock_mhz)
        self._set_limit(order[1], clock_mhz)

    def _set_limit(self, limit: str, clock_mhz: int) -> None:
        self._smi.amdsmi_set_gpu_clk_limit(self._handle, "sclk", limit, clock_mhz)

    @_amd_call("resetting the perf level")
    def reset_clocks(self) -> None:
        self._smi.amdsmi_set_gpu_perf_level(self._handle, self._smi.AmdSmiDevPerfLevel.AUTO)
        self._limits_mhz = None

    def _power_caps(self) -> tuple[PowerLimits, float]:
        """The power caps in W and the unit of amdsmi's values (W per unit)."""
        info = self._smi.amdsmi_get_power_cap_info(self._handle)
        unit_w = _power_cap_unit_w(info)
        limits = PowerLimits(
            current_w=float(info["power_cap"]) * unit_w,
            default_w=float(info["default_power_cap"]) * unit_w,
            min_w=float(info["min_power_cap"]) * unit_w,
            max_w=float(info["max_power_cap"]) * unit_w,
        )
        return limits, unit_w

    @_amd_call("reading the power limit")
    def power_limits(self) -> PowerLimits:
        return self._power_caps()[0]

    @_amd_call("setting the power limit")
    def set_power_limit_w(self, limit_w: float) -> float:
        limits, unit_w = self._power_caps()
        limits.check(limit_w)
        self._smi.amdsmi_set_power_cap(self._handle, POWER_CAP_SENSOR, round(limit_w / unit_w))
        return self._power_caps()[0].current_w

    @_amd_call("resetting the power limit")
    def reset_power_limit(self) -> None:
        limits, unit_w = self._power_caps()
        self._smi.amdsmi_set_power_cap(self._handle, POWER_CAP_SENSOR, round(limits.default_w / unit_w))

    @_amd_call("reading the energy counter")
    def energy_j(self) -> float:
        reading = self._smi.amdsmi_get_energy_count(self._handle)
        if self._energy is None:
            # accumulator x counter_resolution = microjoules
            self._energy = EnergyCounter(
                joules_per_unit=float(reading["counter_resolution"]) * 1e-6,
                widths_bits=(32, 64),  # 32-bit on older firmware, 64-bit accumulators elsewhere
                label=f"GPU {self.index} ({self.name})",
                max_power_w=MAX_GPU_POWER_W,
            )
        return self._energy.update(int(reading["energy_accumulator"]))

    @_amd_call("reading power")
    def power_w(self) -> float | None:
        info = self._smi.amdsmi_get_power_info(self._handle)
        for key in ("current_socket_power", "average_socket_power", "socket_power"):
            value = info.get(key)
            if isinstance(value, int | float) and value > 0:
                return float(value)
        return None

    def capabilities(self) -> DeviceCapabilities:
        def works(call: Callable[[], object]) -> bool:
            try:
                call()
            except VoltanaHardwareError:
                return False
            return True

        privileged = has_clock_privilege()
        detail = (
            ""
            if privileged
            else "not root: SCLK limits cannot be set; run the engine as root or monitor only"
        )
        has_energy = self.energy_source is EnergySource.MEASURED
        return DeviceCapabilities(privileged, has_energy, works(self.power_w), detail)


@_amd_call("listing devices")
def open_amd(device_indices: list[int] | None = None) -> GpuGroup:
    """The visible AMD GPUs (``HIP_VISIBLE_DEVICES``, else ``ROCR_VISIBLE_DEVICES``), or the chosen ones."""
    amdsmi = load_amdsmi()
    amdsmi.amdsmi_init()
    handles = list(amdsmi.amdsmi_get_processor_handles())
    env_var = "HIP_VISIBLE_DEVICES" if "HIP_VISIBLE_DEVICES" in os.environ else "ROCR_VISIBLE_DEVICES"
    visible = [entry for entry in visible_device_map(env_var, len(handles)) if isinstance(entry, int)]
    chosen = device_indices if device_indices else list(range(len(visible)))
    for index in chosen:
        if index < 0 or index >= len(visible):
            raise DeviceIndexError(
                f"GPU index {index} is not visible (this process sees {len(visible)} AMD GPU(s) through "
                f"{env_var}); fix hardware.device_indices"
            )
    return GpuGroup([AmdGpu(index, handles[visible[index]]) for index in chosen])
