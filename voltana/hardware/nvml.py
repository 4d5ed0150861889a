"""NVIDIA driver on ``nvidia-ml-py`` (module ``pynvml``): locked SM clocks, power limit, energy, power.

Locking clocks (``nvmlDeviceSetGpuLockedClocks``) and setting the power management limit
(``nvmlDeviceSetPowerManagementLimit``, mW) need root or CAP_SYS_ADMIN. Application clocks are deprecated and
not used. Every vendor error is mapped to voltana's hierarchy with what to do about it.
"""

from __future__ import annotations

import contextlib
import threading
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
    clock_privilege,
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

GRANT_CAP_SYS_ADMIN = (
    "grant CAP_SYS_ADMIN (`sudo setcap cap_sys_admin+ep <python binary>`, docker --cap-add SYS_ADMIN; root "
    "in a container is not enough without it)"
)
PRIVILEGE_FIX = f"{GRANT_CAP_SYS_ADMIN}; otherwise voltana only monitors (use policy.clock=static-max)"
POWER_LIMIT_FIX = (
    f"{GRANT_CAP_SYS_ADMIN} or use voltana clockd; otherwise leave hardware.power_limit_w empty (the "
    "driver's default limit stays)"
)


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise LibraryNotFoundError(
            f"NVML unavailable: {exc}; install it with `pip install 'voltana[nvidia]'`"
        ) from None
    return pynvml


def map_nvml_error(exc: Exception, action: str) -> VoltanaHardwareError:
    """The voltana exception for a ``pynvml.NVMLError`` raised while doing ``action``."""
    pynvml = _import_pynvml()
    code = getattr(exc, "value", None)
    where = f"NVML {action} failed: {exc}"
    writing = "read" not in action  # locking, setting or resetting
    clocks = "clock" in action and writing
    power_limit = "power limit" in action and writing
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        if clocks:
            return NoPermissionError(f"{where}; locking clocks needs root or CAP_SYS_ADMIN: {PRIVILEGE_FIX}")
        if power_limit:
            return NoPermissionError(
                f"{where}; setting the power limit needs root or CAP_SYS_ADMIN: {POWER_LIMIT_FIX}"
            )
        return NoPermissionError(f"{where}; the driver does not let this process read it")
    if code in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
        need = " (locked clocks need Volta+ and driver >= 440)" if clocks else ""
        return NotSupportedError(f"{where}; this GPU or driver does not support it{need}")
    if code in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):
        return LibraryNotFoundError(
            f"{where}; no NVIDIA driver here (libnvidia-ml.so missing or not loaded): install the driver, "
            "or use hardware.vendor=simulated"
        )
    if code == pynvml.NVML_ERROR_GPU_IS_LOST:
        return GpuLostError(
            f"{where}; the GPU fell off the bus: check `nvidia-smi` and dmesg, reset or reboot"
        )
    if code in (pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_NOT_FOUND):
        if power_limit:
            return InvalidArgumentError(f"{where}; pass a limit inside power_limits() (min_w..max_w)")
        return InvalidArgumentError(f"{where}; pass a clock from supported_clocks_mhz() and a valid device")
    return VoltanaHardwareError(f"{where}; see `nvidia-smi -q` for the device state")


def _nvml_call(action: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator: map ``pynvml.NVMLError`` raised inside to voltana's hierarchy."""
    return vendor_call(lambda: _import_pynvml().NVMLError, map_nvml_error, action)


_init_lock = threading.Lock()
_init_count = 0


@_nvml_call("initialisation")
def nvml_init() -> None:
    """``nvmlInit`` once per process (reference counted)."""
    global _init_count
    pynvml = _import_pynvml()
    with _init_lock:
        if _init_count == 0:
            pynvml.nvmlInit()
        _init_count += 1


def nvml_shutdown() -> None:
    """Balance :func:`nvml_init`; errors at shutdown are ignored."""
    global _init_count
    pynvml = _import_pynvml()
    with _init_lock:
        if _init_count == 0:
            return
        _init_count -= 1
        if _init_count == 0:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()


class NvmlGpu(GpuDevice):
    """One NVIDIA GPU through NVML. ``handle_id`` is the physical index or a UUID."""

    vendor = "nvidia"
    # NVML refreshes the energy counter about every 100 ms: the period measured on A100/H100 by Yang et al.,
    # "Part-time Power Measurements: nvidia-smi's Lack of Attention" (arXiv 2312.02741, 2023); check a node
    # with scripts/gpu_readonly_check.sh.
    energy_refresh_s = 0.1

    @_nvml_call("opening the device")
    def __init__(self, index: int, handle_id: int | str) -> None:
        pynvml = _import_pynvml()
        self._nvml = pynvml
        nvml_init()
        self._open = True
        if isinstance(handle_id, str):
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(handle_id)
        else:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(handle_id)
        name = pynvml.nvmlDeviceGetName(self._handle)
        super().__init__(index, name.decode() if isinstance(name, bytes) else str(name))
        try:
            uuid = pynvml.nvmlDeviceGetUUID(self._handle)
            self.uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        except pynvml.NVMLError:
            self.uuid = None
        # NVML reports a 64-bit mJ counter: a decrease is a reset or glitch, never a wrap in practice; no
        # interval may count more than the enforced power limit allows
        self._energy = EnergyCounter(
            joules_per_unit=1e-3,
            widths_bits=(64,),
            label=f"GPU {index} ({self.name})",
            max_power_w=self._power_limit_w(),
        )
        self._clocks: tuple[int, ...] | None = None
        self.read_energy()  # baseline, and finds out now (one WARNING) whether the counter works

    def _power_limit_w(self) -> float:
        """The enforced power limit (W), else :data:`MAX_GPU_POWER_W` where the driver does not say."""
        try:
            return float(self._nvml.nvmlDeviceGetEnforcedPowerLimit(self._handle)) / 1000.0
        except self._nvml.NVMLError:
            return MAX_GPU_POWER_W

    @_nvml_call("reading supported clocks")
    def supported_clocks_mhz(self) -> tuple[int, ...]:
        if self._clocks is None:
            memory_mhz = max(self._nvml.nvmlDeviceGetSupportedMemoryClocks(self._handle))
            graphics = self._nvml.nvmlDeviceGetSupportedGraphicsClocks(self._handle, memory_mhz)
            self._clocks = tuple(sorted({int(f) for f in graphics}))
        return self._clocks

    @_nvml_call("reading the SM clock")
    def current_clock_mhz(self) -> int:
        return int(self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM))

    @_nvml_call("locking the SM clock")
    def lock_clock_mhz(self, clock_mhz: int) -> int:
        self._nvml.nvmlDeviceSetGpuLockedClocks(self._handle, clock_mhz, clock_mhz)
        return int(self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM))

    @_nvml_call("resetting locked clocks")
    def reset_clocks(self) -> None:
        self._nvml.nvmlDeviceResetGpuLockedClocks(self._handle)

    @_nvml_call("reading the power limit")
    def power_limits(self) -> PowerLimits:
        nvml, handle = self._nvml, self._handle
        min_mw, max_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        return PowerLimits(
            current_w=nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
            default_w=nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000.0,
            min_w=min_mw / 1000.0,
            max_w=max_mw / 1000.0,
        )

    @_nvml_call("setting the power limit")
    def set_power_limit_w(self, limit_w: float) -> float:
        self.power_limits().check(limit_w)
        self._nvml.nvmlDeviceSetPowerManagementLimit(self._handle, round(limit_w * 1000.0))
        self._energy.max_power_w = self._power_limit_w()  # the jump bound follows the enforced limit
        return float(self._nvml.nvmlDeviceGetPowerManagementLimit(self._handle)) / 1000.0

    @_nvml_call("resetting the power limit")
    def reset_power_limit(self) -> None:
        # NVML has no reset call: the default limit is set back (what `nvidia-smi -pl <default>` does)
        default_mw = self._nvml.nvmlDeviceGetPowerManagementDefaultLimit(self._handle)
        self._nvml.nvmlDeviceSetPowerManagementLimit(self._handle, default_mw)
        self._energy.max_power_w = self._power_limit_w()

    @_nvml_call("reading the energy counter")
    def energy_j(self) -> float:
        return self._energy.update(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)))

    @_nvml_call("reading power")
    def power_w(self) -> float | None:
        return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0

    def close(self) -> None:
        if self._open:
            self._open = False
            nvml_shutdown()

    def capabilities(self) -> DeviceCapabilities:
        has_energy = self.energy_source is EnergySource.MEASURED
        try:
            has_power = self.power_w() is not None
        except VoltanaHardwareError:
            has_power = False
        privileged, why = clock_privilege()
        detail = "" if privileged else f"{why}: clocks cannot be locked; {PRIVILEGE_FIX}"
        return DeviceCapabilities(privileged, has_energy, has_power, detail)


@_nvml_call("listing devices")
def open_nvidia(device_indices: list[int] | None = None) -> GpuGroup:
    """The visible NVIDIA GPUs (``CUDA_VISIBLE_DEVICES`` honoured), or the chosen visible indices."""
    pynvml = _import_pynvml()
    nvml_init()
    try:
        visible = visible_device_map("CUDA_VISIBLE_DEVICES", int(pynvml.nvmlDeviceGetCount()))
        chosen = device_indices if device_indices else list(range(len(visible)))
        for index in chosen:
            if index < 0 or index >= len(visible):
                raise DeviceIndexError(
                    f"GPU index {index} is not visible (this process sees {len(visible)} NVIDIA GPU(s) "
                    "through CUDA_VISIBLE_DEVICES); fix hardware.device_indices"
                )
        return GpuGroup([NvmlGpu(index, visible[index]) for index in chosen])
    finally:
        nvml_shutdown()  # each NvmlGpu holds its own reference
