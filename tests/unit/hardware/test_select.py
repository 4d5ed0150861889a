"""Vendor selection through the voltana_register_hardware hook, and the hardware doctor checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy
import pytest

from voltana.core.config import HardwareConfig, VoltanaConfig
from voltana.core.hookspecs import DriverFactory, hookimpl
from voltana.core.plugin_manager import make_plugin_manager
from voltana.hardware.device import GpuGroup
from voltana.hardware.errors import LibraryNotFoundError
from voltana.hardware.select import open_devices, registered_drivers
from voltana.hardware.simulated import SimulatedGpu, open_simulated
from voltana.plugins import get_plugin_manager


def test_builtin_drivers_are_registered_through_the_hook() -> None:
    assert {"nvidia", "amd", "simulated"} <= set(registered_drivers(get_plugin_manager().hook))


def test_simulated_vendor_uses_the_configured_profile_and_indices() -> None:
    hook = get_plugin_manager().hook
    group = open_devices(HardwareConfig(vendor="simulated", simulated_model="llama-2-70b"), hook)
    assert len(group) == 4 and group.vendor == "simulated"
    two = open_devices(
        HardwareConfig(vendor="simulated", simulated_gpu="h100-80gb", device_indices=[0, 1]), hook
    )
    assert len(two) == 2 and two.max_clock_mhz() == 1980


class _Drivers:
    """A test plugin overriding the physical drivers: NVIDIA missing, AMD present or missing."""

    def __init__(self, amd_present: bool) -> None:
        self.amd_present = amd_present
        self.opened: list[str] = []

    def _missing(self, config: HardwareConfig) -> GpuGroup:
        raise LibraryNotFoundError("NVML unavailable: no driver")

    def _amd(self, config: HardwareConfig) -> GpuGroup:
        if not self.amd_present:
            raise LibraryNotFoundError("AMD SMI unavailable: no ROCm")
        self.opened.append("amd")
        return open_simulated()

    @hookimpl
    def voltana_register_hardware(self, register: Callable[[str, DriverFactory], None]) -> None:
        register("nvidia", self._missing)
        register("amd", self._amd)


def _manager(plugin: Any) -> pluggy.PluginManager:
    pm = make_plugin_manager(("voltana.plugins.hardware",), load_entry_points=False)
    pm.register(plugin)  # registered last, so its registrations override the built-ins
    return pm


@pytest.mark.parametrize("amd_present", [True, False])
def test_auto_picks_what_is_present_else_simulated(amd_present: bool) -> None:
    drivers = _Drivers(amd_present)
    group = open_devices(HardwareConfig(vendor="auto"), _manager(drivers).hook)
    assert drivers.opened == (["amd"] if amd_present else [])
    assert isinstance(group.devices[0], SimulatedGpu)


def test_explicit_vendor_errors_are_one_line() -> None:
    with pytest.raises(LibraryNotFoundError, match=r"^NVML unavailable"):
        open_devices(HardwareConfig(vendor="nvidia"), _manager(_Drivers(False)).hook)


def test_doctor_reports_hardware_checks_for_the_simulated_gpu() -> None:
    config = VoltanaConfig(hardware=HardwareConfig(vendor="simulated"))
    checks = [
        c
        for batch in get_plugin_manager().hook.voltana_doctor_checks(config=config, try_lock=False)
        for c in batch
    ]
    hardware = {c.name: c for c in checks if c.section == "hardware"}
    assert {"NVML", "AMD SMI", "devices", "energy", "clock control", "lock test"} <= set(hardware)
    assert hardware["devices"].ok is True and "-> simulated" in hardware["devices"].detail
    assert hardware["energy"].ok is None and "simulated" in hardware["energy"].detail
    assert hardware["clock control"].ok is None
    amd = hardware["AMD SMI"]
    assert amd.ok is True or amd.detail.startswith("AMD SMI unavailable: ")
