"""Built-in GPU drivers (nvidia, amd, simulated) and their ``voltana doctor`` checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voltana.core.contexts import DoctorCheck
from voltana.core.hookspecs import DriverFactory, hookimpl
from voltana.hardware.device import has_clock_privilege
from voltana.hardware.errors import VoltanaHardwareError
from voltana.hardware.nvml import PRIVILEGE_FIX
from voltana.hardware.select import BUILTIN_DRIVERS


@hookimpl
def voltana_register_hardware(register: Callable[[str, DriverFactory], None]) -> None:
    for name, factory in BUILTIN_DRIVERS.items():
        register(name, factory)


def _nvml_check() -> DoctorCheck:
    try:
        import pynvml
    except ImportError:
        return DoctorCheck(
            "hardware", "NVML", None, "nvidia-ml-py not installed", "pip install 'voltana[nvidia]'"
        )
    from voltana.hardware.nvml import nvml_init, nvml_shutdown

    try:
        nvml_init()
    except VoltanaHardwareError as exc:
        return DoctorCheck("hardware", "NVML", None, f"no NVIDIA GPU usable: {exc}")
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as exc:
        return DoctorCheck("hardware", "NVML", False, f"cannot count GPUs: {exc}", "check `nvidia-smi`")
    finally:
        nvml_shutdown()
    return DoctorCheck("hardware", "NVML", count > 0, f"{count} NVIDIA GPU(s) on this node")


def _amd_check() -> DoctorCheck:
    from voltana.hardware.amd import load_amdsmi

    try:
        load_amdsmi()
    except VoltanaHardwareError as exc:
        return DoctorCheck("hardware", "AMD SMI", None, str(exc))
    return DoctorCheck("hardware", "AMD SMI", True, "amdsmi importable")


def _selected_check(config: Any) -> DoctorCheck:
    from voltana.hardware.select import open_devices

    hardware = getattr(config, "hardware", None)
    if hardware is None:
        return DoctorCheck("hardware", "devices", None, "no hardware config given")
    from voltana.plugins import get_plugin_manager

    try:
        group = open_devices(hardware, get_plugin_manager().hook)
    except VoltanaHardwareError as exc:
        return DoctorCheck("hardware", "devices", False, str(exc), "fix hardware.vendor / device_indices")
    try:
        names = ", ".join(f"{d.index}:{d.name}" for d in group.devices)
        clocks = group.supported_clocks_mhz()
        span = f"{clocks[0]}..{clocks[-1]} MHz" if clocks else "no clocks"
        return DoctorCheck(
            "hardware", "devices", True, f"vendor={hardware.vendor} -> {group.vendor}: {names} ({span})"
        )
    finally:
        group.close()


def _privilege_check() -> DoctorCheck:
    if has_clock_privilege():
        return DoctorCheck("hardware", "clock control", True, "root or CAP_SYS_ADMIN: clocks can be locked")
    return DoctorCheck(
        "hardware",
        "clock control",
        None,
        "not root, no CAP_SYS_ADMIN: real GPUs monitor-only",
        PRIVILEGE_FIX,
    )


@hookimpl
def voltana_doctor_checks(config: Any) -> list[DoctorCheck]:
    return [_nvml_check(), _amd_check(), _selected_check(config), _privilege_check()]
