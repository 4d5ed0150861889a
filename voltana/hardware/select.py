"""Opening the GPUs of one instance by config: ``hardware.vendor = auto | nvidia | amd | simulated``.

Drivers are factories ``(HardwareConfig) -> GpuGroup`` registered by name through the
``voltana_register_hardware`` hook (the built-ins come from ``voltana.plugins.hardware``); without a hook the
built-in factories below are used directly. ``auto`` tries NVIDIA, then AMD, and falls back to the simulated
GPU when neither is present with a WARNING saying why: its joules are modelled, and every record, span, metric
and ``/voltana/state`` says ``energy_source = simulated``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from voltana.core.config import HardwareConfig
from voltana.hardware.amd import open_amd
from voltana.hardware.clockd import ClockdClient, ClockdGpuGroup, check_same_gpus
from voltana.hardware.device import GpuGroup
from voltana.hardware.errors import (
    DeviceIndexError,
    DeviceNotFoundError,
    LibraryNotFoundError,
    NotSupportedError,
    VoltanaHardwareError,
)
from voltana.hardware.nvml import open_nvidia
from voltana.hardware.simulated import open_simulated

logger = logging.getLogger("voltana.hardware")

DriverFactory = Callable[[HardwareConfig], GpuGroup]
AUTO_ORDER = ("nvidia", "amd")


def open_nvidia_from_config(config: HardwareConfig) -> GpuGroup:
    """NVIDIA GPUs through NVML."""

    return open_nvidia(list(config.device_indices))


def open_amd_from_config(config: HardwareConfig) -> GpuGroup:
    """AMD GPUs through amdsmi."""

    return open_amd(list(config.device_indices))


def open_simulated_from_config(config: HardwareConfig) -> GpuGroup:
    """Simulated GPUs: ``simulated_gpu`` x ``simulated_model``; one per device index, else the model's TP."""

    tp = len(config.device_indices) or None
    return open_simulated(config.simulated_gpu, config.simulated_model, tp)


BUILTIN_DRIVERS: dict[str, DriverFactory] = {
    "nvidia": open_nvidia_from_config,
    "amd": open_amd_from_config,
    "simulated": open_simulated_from_config,
}


def registered_drivers(hook: Any | None = None) -> dict[str, DriverFactory]:
    """Driver factories by vendor name: from ``hook.voltana_register_hardware`` or the built-ins.

    pluggy calls the newest plugin first, so a plugin registered after the built-ins overrides a vendor name.
    """
    if hook is None:
        return dict(BUILTIN_DRIVERS)
    found: dict[str, DriverFactory] = {}

    def register(name: str, factory: DriverFactory) -> None:
        found.setdefault(name, factory)

    hook.voltana_register_hardware(register=register)
    return found


def open_devices(
    config: HardwareConfig, hook: Any | None = None, *, fallback_to_simulated: bool = True
) -> GpuGroup:
    """The GPU group an instance drives, per ``config.vendor``; raises ``VoltanaHardwareError`` (one line).

    With ``config.clockd_socket`` the clock locks and resets of a physical group go through ``voltana
    clockd`` (:class:`~voltana.hardware.clockd.ClockdGpuGroup`); energy and clock reads stay local. A daemon
    serving another vendor or other GPUs raises :class:`~voltana.hardware.errors.ClockdMismatchError`
    carrying the local group (still open). ``fallback_to_simulated=False``: ``vendor = auto`` with no
    physical GPU raises ``DeviceNotFoundError`` instead of opening the simulated GPU.
    """
    group = _open_group(config, hook, fallback_to_simulated)
    if config.clockd_socket and group.vendor != "simulated":
        try:
            client = ClockdClient(config.clockd_socket)
        except VoltanaHardwareError:
            group.close()
            raise
        try:
            check_same_gpus(client.info, group, config.clockd_socket)
        except VoltanaHardwareError:
            client.close()
            raise
        return ClockdGpuGroup(group, client)
    return group


def _open_group(config: HardwareConfig, hook: Any | None, fallback_to_simulated: bool = True) -> GpuGroup:
    drivers: Mapping[str, DriverFactory] = registered_drivers(hook)
    if config.vendor != "auto":
        factory = drivers.get(config.vendor)
        if factory is None:
            raise NotSupportedError(
                f"no GPU driver named {config.vendor!r} is registered; known: {', '.join(sorted(drivers))}"
            )
        return factory(config)
    reasons: list[str] = []
    for vendor in AUTO_ORDER:
        factory = drivers.get(vendor)
        if factory is None:
            continue
        try:
            return factory(config)
        except DeviceIndexError:
            raise  # that vendor's GPUs are here: a mistyped index is a config error, not "no GPU"
        except (LibraryNotFoundError, DeviceNotFoundError) as exc:
            reasons.append(f"{vendor}: {exc}")
        except VoltanaHardwareError as exc:
            reasons.append(f"{vendor}: {exc}")
    if not fallback_to_simulated:
        raise DeviceNotFoundError(
            f"hardware.vendor=auto found no physical GPU ({'; '.join(reasons) or 'no driver registered'})"
        )
    logger.warning(
        "voltana: hardware.vendor=auto found no physical GPU (%s); using the SIMULATED GPU: clocks are not "
        "controlled and energy is modelled, not measured (energy_source=simulated); set hardware.vendor="
        "simulated to silence this, or nvidia/amd to fail instead",
        "; ".join(reasons) or "none",
    )
    return drivers.get("simulated", open_simulated_from_config)(config)
