"""Energy over a GPU group's cumulative counters: begin/end windows, and the off-hot-path sampler thread."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from voltana.hardware.device import GpuGroup

logger = logging.getLogger("voltana.hardware")

NVML_REFRESH_S = 0.1
"""NVML refreshes ``nvmlDeviceGetTotalEnergyConsumption`` about every 100 ms (NVIDIA's NVML API reference;
Yang et al., "Part-time Power Measurements: nvidia-smi's Lack of Attention", 2023): the default sampling
period for a group that does not say its own."""


@dataclass(frozen=True, slots=True)
class EnergyWindow:
    """An open window: the cumulative per-device joules when it began."""

    start_j: tuple[float | None, ...]  # None: that device's read failed or its energy is unknown


class EnergyMeter:
    """Cumulative joules per device of one group, and begin/end windows.

    Windows are cheap (one counter read per device) and any number may be open at once. Readings never raise
    (:meth:`GpuDevice.read_energy`): counter drops count 0, a missing counter falls back to integrated power,
    and a failed read makes the windows on it None. Note that NVML updates its energy counter about every
    100 ms (``group.energy_refresh_s``): a window much shorter than that reads coarse values; sample on that
    period off the hot path and apportion.
    """

    def __init__(self, group: GpuGroup) -> None:
        self.group = group

    def per_device_j(self) -> tuple[float | None, ...]:
        """Cumulative energy of each device (J; None where unreadable now)."""
        return tuple(device.read_energy().energy_j for device in self.group.devices)

    def total_j(self) -> float | None:
        """Cumulative energy of the whole group (J; None when any device is unreadable now)."""
        return self.group.read_energy().energy_j

    def begin(self) -> EnergyWindow:
        """Open a window now."""
        return EnergyWindow(self.per_device_j())

    def end(self, window: EnergyWindow) -> float | None:
        """Joules used by the group since ``window`` began (>= 0); None when a read on either end failed."""
        now = self.per_device_j()
        total = 0.0
        for after, before in zip(now, window.start_j, strict=True):
            if after is None or before is None:
                return None
            total += max(0.0, after - before)
        return total


def group_energy_reader(group: GpuGroup) -> Callable[[], float | None]:
    """A function returning the group's cumulative joules now, or None when unreadable; never raises.

    Uses ``GpuGroup.read_energy()`` (never raises; None when unknown) where the group has it, else
    ``energy_j()`` with errors turned into None.
    """
    read_energy = getattr(group, "read_energy", None)
    if read_energy is not None:

        def read() -> float | None:
            value = read_energy().energy_j
            return None if value is None else float(value)

        return read

    def read_counter() -> float | None:
        try:
            return float(group.energy_j())
        except Exception:
            return None

    return read_counter


def energy_refresh_s(group: GpuGroup, default_s: float = NVML_REFRESH_S) -> float:
    """How often the group's vendor refreshes its energy counter (s); 0 means every read (simulated)."""
    value = getattr(group, "energy_refresh_s", None)
    if value is None:
        return 0.0 if group.vendor == "simulated" else default_s
    return float(value)


class EnergySampler:
    """Reads cumulative energy from its own thread, so no counter read ever runs on the engine thread.

    Every ``period_s / POLLS_PER_PERIOD`` it reads; a reading that changed (the vendor refreshed its counter)
    is handed to ``on_sample(t_s, joules)``, an unchanged one as ``on_sample(t_s, None)`` (so interval ends
    track the refreshes within a quarter period, and the consumer still gets a tick to settle on). An
    unreadable value (a transient driver error) is also None: that window merges into the next, no energy is
    lost. ``reads`` counts the reads. ``on_sample`` runs on the sampler thread and must not raise (a failure
    is logged once and the sampler carries on).
    """

    POLLS_PER_PERIOD = 4

    def __init__(
        self,
        read: Callable[[], float | None],
        period_s: float,
        on_sample: Callable[[float, float | None], None],
        *,
        clock: Callable[[], float] = time.perf_counter,
        name: str = "voltana-energy",
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"sampling period must be > 0 s, got {period_s}")
        self.period_s = period_s
        self.reads = 0
        self._read = read
        self._on_sample = on_sample
        self._clock = clock
        self._last_j: float | None = None
        self._last_emit_s = -math.inf
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sample at a time (the thread, and close() from another thread)
        self._failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> EnergySampler:
        """Take the baseline reading now and start the thread."""
        self.sample_now(force=True)
        self._thread.start()
        return self

    def sample_now(self, force: bool = False) -> None:
        """One read and one ``on_sample`` call, in the calling thread; ``force`` passes an unchanged value."""
        with self._lock:
            t_s = self._clock()
            joules = self._read()
            self.reads += 1
            changed = joules is not None and (
                force or joules != self._last_j or t_s - self._last_emit_s >= 2 * self.period_s
            )
            if changed:
                self._last_j = joules
                self._last_emit_s = t_s
            try:
                self._on_sample(t_s, joules if changed else None)
            except Exception as exc:
                if not self._failed:
                    self._failed = True
                    logger.warning("voltana: energy accounting failed (%s); logged once", exc, exc_info=True)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and take a last reading (so the run's tail is accounted); idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        self.sample_now(force=True)

    def _run(self) -> None:
        poll_s = self.period_s / self.POLLS_PER_PERIOD
        while not self._stop.wait(poll_s):
            self.sample_now()
