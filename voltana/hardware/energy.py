"""Energy windows over a GPU group's cumulative counters (an iteration, a request, a whole run)."""

from __future__ import annotations

from dataclasses import dataclass

from voltana.hardware.device import GpuGroup


@dataclass(frozen=True, slots=True)
class EnergyWindow:
    """An open window: the cumulative per-device joules when it began."""

    start_j: tuple[float, ...]


class EnergyMeter:
    """Cumulative joules per device of one group, and begin/end windows.

    Windows are cheap (one counter read per device) and any number may be open at once. Counters are
    monotonic (the devices unwrap vendor counters), so a window is never negative. Note that NVML updates its
    energy counter about every 100 ms: a window much shorter than that reads coarse values; attribute energy
    over longer windows or accumulate iterations.
    """

    def __init__(self, group: GpuGroup) -> None:
        self.group = group

    def per_device_j(self) -> tuple[float, ...]:
        """Cumulative energy of each device (J)."""
        return tuple(device.energy_j() for device in self.group.devices)

    def total_j(self) -> float:
        """Cumulative energy of the whole group (J)."""
        return sum(self.per_device_j())

    def begin(self) -> EnergyWindow:
        """Open a window now."""
        return EnergyWindow(self.per_device_j())

    def end(self, window: EnergyWindow) -> float:
        """Joules used by the group since ``window`` began (>= 0)."""
        now = self.per_device_j()
        return sum(max(0.0, after - before) for after, before in zip(now, window.start_j, strict=True))
