"""The vendor-neutral GPU interface (Zeus-style layering) and the group of TP GPUs of one engine instance.

Units are in the names: ``_mhz`` SM clock, ``_j`` cumulative energy, ``_w`` power. Driver calls may block for
milliseconds and raise :class:`~voltana.hardware.errors.VoltanaHardwareError`; never call them on the
per-iteration path (the :class:`~voltana.hardware.applier.ClockApplier` does it off that path).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from voltana.hardware.errors import DeviceNotFoundError, InvalidArgumentError


@dataclass(frozen=True, slots=True)
class DeviceCapabilities:
    """What a device can do here; ``detail`` says why not (one line, with the fix)."""

    can_lock_clocks: bool
    has_energy_counter: bool
    has_power_reading: bool
    detail: str = ""


class GpuDevice(ABC):
    """One GPU; ``index`` is the process-visible index (after ``CUDA_VISIBLE_DEVICES`` and the like)."""

    vendor: str = "unknown"

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name

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

    @abstractmethod
    def capabilities(self) -> DeviceCapabilities:
        """What this device supports in this process."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release vendor handles (default: nothing)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index}, name={self.name!r})"


class EnergyCounter:
    """Turns raw readings of a wrapping vendor counter into monotonic cumulative joules.

    A reading lower than the previous one means the counter wrapped: at 2**32 when the previous reading fit in
    32 bits (older firmware, the AMD accumulator on some parts), else at 2**64. ``joules_per_unit`` converts
    counter units (NVML: mJ -> 1e-3; AMD: accumulator x resolution uJ -> resolution * 1e-6).
    """

    def __init__(self, joules_per_unit: float) -> None:
        self.joules_per_unit = joules_per_unit
        self._previous: int | None = None
        self._total_units = 0

    def update(self, raw: int) -> float:
        """Feed one raw reading; returns cumulative joules since the first reading."""
        if self._previous is not None:
            delta = raw - self._previous
            if delta < 0:
                delta += 2**32 if self._previous < 2**32 else 2**64
            self._total_units += delta
        self._previous = raw
        return self._total_units * self.joules_per_unit


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


def has_clock_privilege() -> bool:
    """Root, or CAP_SYS_ADMIN in the effective capability set (needed to lock clocks)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 21))  # CAP_SYS_ADMIN = 21
    except OSError:
        pass
    return False


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

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        """Lock every member; returns the lowest read-back clock (the group runs at its slowest member)."""
        if self._clocks and clock_mhz not in self._clocks:
            raise InvalidArgumentError(
                f"clock {clock_mhz} MHz is not supported by this GPU group "
                f"(range {self._clocks[0]}..{self._clocks[-1]} MHz); pick one of supported_clocks_mhz()"
            )
        return min(device.lock_clock_mhz(clock_mhz) for device in self.devices)

    def reset_clocks(self) -> None:
        """Reset every member (attempts all, re-raises the first error)."""
        first_error: Exception | None = None
        for device in self.devices:
            try:
                device.reset_clocks()
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def current_clock_mhz(self) -> int:
        """Lowest current clock among members (MHz)."""
        return min(device.current_clock_mhz() for device in self.devices)

    def energy_j(self) -> float:
        """Cumulative energy of all members (J)."""
        return sum(device.energy_j() for device in self.devices)

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
