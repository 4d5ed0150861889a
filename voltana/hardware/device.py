"""The vendor-neutral GPU interface (Zeus-style layering) and the group of TP GPUs of one engine instance.

Units are in the names: ``_mhz`` SM clock, ``_j`` cumulative energy, ``_w`` power. Driver calls may block for
milliseconds and raise :class:`~voltana.hardware.errors.VoltanaHardwareError`; never call them on the
per-iteration path (the :class:`~voltana.hardware.applier.ClockApplier` does it off that path).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from voltana.core.types import EnergySource
from voltana.hardware.counters import (
    MAX_GPU_POWER_W,
    EnergyCounter,
    EnergyReading,
    EnergyTracker,
    weakest_source,
)
from voltana.hardware.errors import DeviceNotFoundError, InvalidArgumentError, NotSupportedError

__all__ = [
    "MAX_GPU_POWER_W",
    "DeviceCapabilities",
    "EnergyCounter",
    "EnergyReading",
    "EnergySource",
    "GpuDevice",
    "GpuGroup",
    "PowerLimits",
    "call_every",
    "clock_privilege",
    "has_clock_privilege",
    "visible_device_map",
]


@dataclass(frozen=True, slots=True)
class DeviceCapabilities:
    """What a device can do here; ``detail`` says why not (one line, with the fix)."""

    can_lock_clocks: bool
    has_energy_counter: bool
    has_power_reading: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """One GPU's power limit as the driver reports it (W, per GPU).

    ``current_w`` is the limit in force now (NVML's power management limit, amdsmi's ``power_cap``),
    ``default_w`` the driver's default (what a reset restores), ``min_w``..``max_w`` the range the driver
    accepts for a new limit. A group's limits are per GPU too: see :meth:`GpuGroup.power_limits`.
    """

    current_w: float
    default_w: float
    min_w: float
    max_w: float

    def check(self, limit_w: float, where: str = "power limit") -> None:
        """Raise :class:`InvalidArgumentError` (one line) unless ``min_w <= limit_w <= max_w``."""
        if not self.min_w <= limit_w <= self.max_w:
            raise InvalidArgumentError(
                f"{where} {limit_w:g} W is outside the range this GPU accepts "
                f"({self.min_w:g}..{self.max_w:g} W, default {self.default_w:g} W); pick a value inside it"
            )


class GpuDevice(ABC):
    """One GPU; ``index`` is the process-visible index (after ``CUDA_VISIBLE_DEVICES`` and the like)."""

    vendor: str = "unknown"
    measured_energy_source: EnergySource = EnergySource.MEASURED  # what the counter's joules are
    energy_refresh_s: float = 0.0  # how often the vendor refreshes the energy counter (0: on every read)
    uuid: str | None = None  # the physical device's identity where the vendor reports one (NVML: GPU-...)

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self._energy_tracker: EnergyTracker | None = None

    @abstractmethod
    def supported_clocks_mhz(self) -> tuple[int, ...]:
        """SM clocks the device accepts, ascending (MHz)."""

    @abstractmethod
    def current_clock_mhz(self) -> int:
        """The SM clock the device runs at now (MHz)."""

    @abstractmethod
    def lock_clock_mhz(self, clock_mhz: int) -> int:
        """Lock the SM clock to ``clock_mhz``; returns the clock read back (the driver may arbitrate)."""

    @abstractmethod
    def reset_clocks(self) -> None:
        """Give clock control back to the driver's default policy."""

    @abstractmethod
    def energy_j(self) -> float:
        """Cumulative energy since the device was opened (J, monotonic; vendor counter wrap handled)."""

    def power_w(self) -> float | None:
        """Instantaneous (or driver-averaged) power (W); None where not available."""
        return None

    def power_limits(self) -> PowerLimits:
        """The power limit in force, the default and the accepted range (W); reading needs no privilege.

        Raises :class:`NotSupportedError` where the driver has no power limit (the default here).
        """
        raise NotSupportedError(f"{self.vendor} GPU {self.index} ({self.name}): power limits not supported")

    def set_power_limit_w(self, limit_w: float) -> float:
        """Set the power limit (W, checked against :meth:`power_limits`); returns the limit read back.

        Needs the same privilege as locking clocks (``NoPermissionError`` otherwise). The limit outlives
        the process on a real GPU: :meth:`reset_power_limit` gives the default back.
        """
        raise NotSupportedError(f"{self.vendor} GPU {self.index} ({self.name}): power limits not supported")

    def reset_power_limit(self) -> None:
        """Restore the driver's default power limit."""
        raise NotSupportedError(f"{self.vendor} GPU {self.index} ({self.name}): power limits not supported")

    def _tracker(self) -> EnergyTracker:
        tracker = getattr(self, "_energy_tracker", None)
        if tracker is None:
            tracker = EnergyTracker(
                f"GPU {self.index} ({self.name})", self.energy_j, self.power_w, self.measured_energy_source
            )
            self._energy_tracker = tracker
        return tracker

    def read_energy(self) -> EnergyReading:
        """Cumulative energy now with its source; never raises (see :class:`~voltana.hardware.counters.\
EnergyTracker`): counter, else integrated power, else unknown; a failed read gives ``energy_j = None``."""
        return self._tracker().read()

    @property
    def energy_source(self) -> EnergySource:
        """Where this device's joules come from now (changes once if the counter turns out missing)."""
        return self._tracker().source

    @abstractmethod
    def capabilities(self) -> DeviceCapabilities:
        """What this device supports in this process."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release vendor handles (default: nothing)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index}, name={self.name!r})"


def visible_device_map(env_var: str, physical_count: int) -> list[int | str]:
    """Physical device (index, or UUID string) for each process-visible index, from ``env_var``.

    Unset: identity. Empty: no devices. Entries are integers or UUIDs (``GPU-...``); parsing stops at the
    first invalid entry, as the CUDA runtime does.
    """
    raw = os.environ.get(env_var)
    if raw is None:
        return list(range(physical_count))
    mapping: list[int | str] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            number = int(entry)
            if number < 0 or number >= physical_count:
                break
            mapping.append(number)
        else:
            mapping.append(entry)
    return mapping


PROC_STATUS = "/proc/self/status"
CAP_SYS_ADMIN = 21  # linux/capability.h


def clock_privilege() -> tuple[bool, str]:
    """Whether this process may lock GPU clocks, and why (one line).

    On Linux the effective capability set decides (``CapEff`` in ``/proc/self/status``, bit CAP_SYS_ADMIN):
    root in a container started without ``--cap-add SYS_ADMIN`` does NOT have it. Elsewhere: root.
    """
    try:
        with open(PROC_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    if int(line.split()[1], 16) & (1 << CAP_SYS_ADMIN):
                        return True, "CAP_SYS_ADMIN in the effective capability set"
                    if hasattr(os, "geteuid") and os.geteuid() == 0:
                        return (
                            False,
                            "root but without CAP_SYS_ADMIN (a container without --cap-add SYS_ADMIN?)",
                        )
                    return False, "not root and no CAP_SYS_ADMIN"
    except (OSError, ValueError, IndexError):
        pass
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return True, "root"
    return False, "not root and no CAP_SYS_ADMIN"


def has_clock_privilege() -> bool:
    """CAP_SYS_ADMIN in the effective set (root alone is not enough in a container)."""
    return clock_privilege()[0]


def call_every(actions: Iterable[Callable[[], object]]) -> None:
    """Call every action even after one fails, then re-raise the first error: a restore must try every GPU
    and every setting (a refused clock reset must not leave the power limit set)."""
    first_error: Exception | None = None
    for action in actions:
        try:
            action()
        except Exception as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


class GpuGroup:
    """The GPUs of one engine instance (tensor parallel): they move together.

    ``supported_clocks_mhz`` is the intersection over members; energy and power are sums.
    """

    def __init__(self, devices: Sequence[GpuDevice]) -> None:
        if not devices:
            raise DeviceNotFoundError("no GPU devices selected; check hardware.device_indices and visibility")
        self.devices: tuple[GpuDevice, ...] = tuple(devices)
        common = set(self.devices[0].supported_clocks_mhz())
        for device in self.devices[1:]:
            common &= set(device.supported_clocks_mhz())
        self._clocks = tuple(sorted(common))

    @property
    def vendor(self) -> str:
        """Vendor of the members (one vendor per group)."""
        return self.devices[0].vendor

    def __len__(self) -> int:
        return len(self.devices)

    def supported_clocks_mhz(self) -> tuple[int, ...]:
        """Clocks every member accepts, ascending (MHz)."""
        return self._clocks

    def max_clock_mhz(self) -> int:
        """Highest common clock (MHz)."""
        return self._clocks[-1]

    def check_supported(self, clock_mhz: int) -> None:
        """Raise ``InvalidArgumentError`` unless every member accepts ``clock_mhz``."""
        if self._clocks and clock_mhz not in self._clocks:
            raise InvalidArgumentError(
                f"clock {clock_mhz} MHz is not supported by this GPU group "
                f"(range {self._clocks[0]}..{self._clocks[-1]} MHz); pick one of supported_clocks_mhz()"
            )

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        """Lock every member; returns the lowest read-back clock (the group runs at its slowest member)."""
        self.check_supported(clock_mhz)
        return min(device.lock_clock_mhz(clock_mhz) for device in self.devices)

    def reset_clocks(self) -> None:
        """Reset every member (attempts all, re-raises the first error)."""
        call_every(device.reset_clocks for device in self.devices)

    def power_limits(self) -> PowerLimits:
        """Per-GPU limits every member accepts: the lowest limit in force and default, the intersection of
        the ranges (W). Raises ``NotSupportedError`` if a member has none, ``InvalidArgumentError`` if the
        members' ranges do not overlap."""
        limits = [device.power_limits() for device in self.devices]
        combined = PowerLimits(
            current_w=min(limit.current_w for limit in limits),
            default_w=min(limit.default_w for limit in limits),
            min_w=max(limit.min_w for limit in limits),
            max_w=min(limit.max_w for limit in limits),
        )
        if combined.min_w > combined.max_w:
            raise InvalidArgumentError(
                f"the GPUs of this group accept no common power limit ({combined.min_w:g} W minimum on one, "
                f"{combined.max_w:g} W maximum on another); set limits per GPU with `nvidia-smi -pl`"
            )
        return combined

    def set_power_limit_w(self, limit_w: float) -> float:
        """Set ``limit_w`` (W, per GPU) on every member after checking the common range; returns the lowest
        read-back limit. Raises ``InvalidArgumentError`` (one line, nothing set) outside the range."""
        self.power_limits().check(limit_w)
        return min(device.set_power_limit_w(limit_w) for device in self.devices)

    def reset_power_limit(self) -> None:
        """Restore every member's default power limit (attempts all, re-raises the first error)."""
        call_every(device.reset_power_limit for device in self.devices)

    def current_clock_mhz(self) -> int:
        """Lowest current clock among members (MHz)."""
        return min(device.current_clock_mhz() for device in self.devices)

    def energy_j(self) -> float:
        """Cumulative energy of all members (J); raises ``VoltanaHardwareError`` (see :meth:`read_energy`)."""
        return sum(device.energy_j() for device in self.devices)

    def read_energy(self) -> EnergyReading:
        """Cumulative energy of all members with the weakest member's source; never raises.

        ``energy_j`` is None when any member's read failed or is unknown (skip that window).
        """
        readings = [device.read_energy() for device in self.devices]
        values = [r.energy_j for r in readings]
        total = None if any(v is None for v in values) else sum(v for v in values if v is not None)
        return EnergyReading(
            total, weakest_source([r.source for r in readings]), max(r.monotonic_s for r in readings)
        )

    @property
    def energy_source(self) -> EnergySource:
        """The weakest member's source: ``measured``, ``power-integrated``, ``simulated`` or ``unknown``."""
        return weakest_source([device.energy_source for device in self.devices])

    @property
    def energy_refresh_s(self) -> float:
        """The slowest member's counter refresh period (s): sample energy at this period or slower."""
        return max(device.energy_refresh_s for device in self.devices)

    def power_w(self) -> float | None:
        """Summed power (W); None if any member cannot report it."""
        total = 0.0
        for device in self.devices:
            reading = device.power_w()
            if reading is None:
                return None
            total += reading
        return total

    def capabilities(self) -> DeviceCapabilities:
        """The weakest member's capabilities."""
        caps = [device.capabilities() for device in self.devices]
        detail = next((c.detail for c in caps if c.detail), "")
        return DeviceCapabilities(
            can_lock_clocks=all(c.can_lock_clocks for c in caps),
            has_energy_counter=all(c.has_energy_counter for c in caps),
            has_power_reading=all(c.has_power_reading for c in caps),
            detail=detail,
        )

    def close(self) -> None:
        """Close every member."""
        for device in self.devices:
            device.close()
