"""Vendor energy counters made safe: wraps vs drops, a missing or failing counter, and where joules come from.

- :class:`EnergyCounter` turns raw readings of a vendor counter into monotonic cumulative joules. A reading
  below the previous one is a *wrap* only when the counter's width explains it with a small step (the
  wrapped step is below a quarter of the range); any other decrease is a *drop* (driver reset, firmware
  glitch): that interval counts 0 J and the counter re-bases on the new value, unless a reading within
  ``GLITCH_READS`` reads is back at or above the pre-drop value (a glitch: measured from the pre-drop
  value). No interval counts more than the device's power limit allows (an implausible jump is a glitch,
  bounded by limit x elapsed). One WARNING per kind, per counter.
- :class:`EnergyTracker` reads one device's energy and never raises: the counter while it works; when the
  counter is missing (NOT_SUPPORTED, no permission) or fails :data:`FAILURES_BEFORE_FALLBACK` times in a row,
  it integrates power (trapezoid rule between reads) and says so with ``source = power-integrated``; with no
  power reading either, energy is ``unknown``. A *failing* counter (not a missing one) is tried again on every
  read and used again as soon as it reads (one WARNING): cumulative joules continue from the integrated
  value, so nothing is counted twice. A single failed read gives ``energy_j = None`` for that read only (the
  caller skips that window). One WARNING per kind of event, never per read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from voltana.core.types import EnergySource
from voltana.hardware.errors import (
    GpuLostError,
    LibraryNotFoundError,
    NoPermissionError,
    NotSupportedError,
    VoltanaHardwareError,
)

logger = logging.getLogger("voltana.hardware")

FAILURES_BEFORE_FALLBACK = 3  # consecutive failed counter reads that make a counter "failing", not "glitchy"
MAX_GPU_POWER_W = 2_000.0
"""The power bound for energy jumps where the driver reports no power limit (W): a conservative ceiling above
the board power of current data-centre GPUs (NVIDIA H100 SXM 700 W, B200 1,000 W per NVIDIA's datasheets;
AMD MI300X 750 W per AMD's datasheet), so it only ever catches impossible jumps."""
_MISSING = (NotSupportedError, NoPermissionError, LibraryNotFoundError, GpuLostError)


_WEAKNESS = {
    EnergySource.MEASURED: 0,
    EnergySource.POWER_INTEGRATED: 1,
    EnergySource.SIMULATED: 2,
    EnergySource.UNKNOWN: 3,
}


def weakest_source(sources: Sequence[EnergySource]) -> EnergySource:
    """The least trustworthy of ``sources`` (a group's joules are only as good as its worst member)."""
    return max(sources, key=_WEAKNESS.__getitem__) if sources else EnergySource.UNKNOWN


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """One read of cumulative energy.

    ``energy_j``: cumulative joules (monotonic), or None when this read failed (skip the window that ends or
    starts here) or energy is unknown. ``monotonic_s``: ``time.monotonic()`` right after the read.
    """

    energy_j: float | None
    source: EnergySource
    monotonic_s: float


class EnergyCounter:
    """Raw readings of a wrapping vendor counter -> monotonic cumulative joules (drops count 0 and re-base).

    ``joules_per_unit`` converts counter units (NVML: mJ -> 1e-3; AMD: accumulator x resolution uJ).
    ``widths_bits``: the widths the counter may have (NVML: 64; AMD: 32 on older firmware, else 64); a
    decrease is a wrap at width ``w`` only when the wrapped step ``raw + 2**w - previous`` is below
    ``2**(w-2)`` units. ``label`` names the device in the WARNINGs.

    A *drop* (any other decrease) opens a glitch window of :attr:`GLITCH_READS` reads: a reading back at or
    above the value before the drop within it means the low readings were a glitch, and the interval is
    measured from the pre-drop value (however many low reads there were: the energy sampler reads four times
    per counter refresh, so one bad refresh is seen several times). Past the window the drop was a reset and
    counting continues from the new base. Whatever happens, one interval never counts more than
    ``max_power_w x elapsed x`` :attr:`JUMP_SAFETY` (+ :attr:`JUMP_SLACK_S` of stale counter): a larger
    jump is a glitch too, bounded by ``max_power_w x elapsed``, with one WARNING. ``max_power_w`` is the
    device's power limit (W; None: no bound); ``clock`` gives seconds (``time.monotonic``).
    """

    GLITCH_READS = 16  # four counter refreshes at the sampler's four reads per refresh
    JUMP_SAFETY = 2.0  # power may briefly exceed the limit; twice the limit is never sustained
    JUMP_SLACK_S = (
        1.0  # a counter refreshed late (NVML: every ~100 ms) may catch up more than one read's time
    )

    def __init__(
        self,
        joules_per_unit: float,
        widths_bits: Sequence[int] = (64,),
        label: str = "GPU",
        *,
        max_power_w: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.joules_per_unit = joules_per_unit
        self.widths_bits = tuple(sorted(widths_bits))
        self.label = label
        self.max_power_w = max_power_w
        self.drops = 0
        self.wraps = 0
        self.glitches = 0  # implausible jumps bounded by the power limit
        self._clock = clock
        self._previous: int | None = None
        self._previous_s = 0.0
        # open glitch windows: (reading before the drop, total units then, reads left, time of that reading)
        self._pending: list[tuple[int, int, int, float]] = []
        self._total_units = 0

    def _wrapped_step(self, raw: int, previous: int) -> int | None:
        for width in self.widths_bits:
            size = 1 << width
            if previous < size and raw < size:
                step = raw + size - previous
                if step < size >> 2:
                    return step
        return None

    def update(self, raw: int) -> float:
        """Feed one raw reading; returns cumulative joules since the first reading (never decreasing)."""
        now_s = self._clock()
        previous = self._previous
        if previous is not None:
            elapsed_s = max(0.0, now_s - self._previous_s)
            recovered = [p for p in self._pending if raw >= p[0]]
            if recovered:
                before_drop, total_then, _, before_drop_s = max(
                    recovered
                )  # the highest value it is back above
                self._pending = [p for p in self._pending if raw < p[0]]
                # measured from the pre-drop value; what the low readings counted is not counted again
                step = self._bound(raw - before_drop, max(0.0, now_s - before_drop_s))
                self._total_units = max(self._total_units, total_then + step)
            else:
                delta = raw - previous
                if delta < 0:
                    delta = self._decrease(raw, previous)
                self._total_units += self._bound(delta, elapsed_s)
            self._age_pending()
        self._previous = raw
        self._previous_s = now_s
        return self._total_units * self.joules_per_unit

    def _age_pending(self) -> None:
        self._pending = [
            (value, total, left - 1, at_s) for value, total, left, at_s in self._pending if left > 1
        ]

    def _bound(self, delta_units: int, elapsed_s: float) -> int:
        """``delta_units``, or the power limit's worth of ``elapsed_s`` when the step is implausibly large."""
        if self.max_power_w is None or delta_units <= 0:
            return delta_units
        limit_j = self.max_power_w * self.JUMP_SAFETY * (elapsed_s + self.JUMP_SLACK_S)
        if delta_units * self.joules_per_unit <= limit_j:
            return delta_units
        self.glitches += 1
        bounded = round(self.max_power_w * elapsed_s / self.joules_per_unit)
        if self.glitches == 1:
            logger.warning(
                "voltana: the energy counter of %s jumped %.0f J in %.3f s, more than its %.0f W power limit "
                "allows: a glitch; counting %.1f J (the limit x the time) for that interval (reported once; "
                "later jumps are bounded the same way silently)",
                self.label,
                delta_units * self.joules_per_unit,
                elapsed_s,
                self.max_power_w,
                bounded * self.joules_per_unit,
            )
        return bounded

    def _decrease(self, raw: int, previous: int) -> int:
        wrapped = self._wrapped_step(raw, previous)
        if wrapped is not None:
            self.wraps += 1
            return wrapped
        self.drops += 1
        self._pending.append((previous, self._total_units, self.GLITCH_READS + 1, self._previous_s))
        if self.drops == 1:
            logger.warning(
                "voltana: the energy counter of %s went backward (%d -> %d units): a driver reset or glitch, "
                "not a wrap; counting 0 J until it is back above %d (a glitch, measured from there) or for "
                "%d reads (a reset: re-based on the new value) (reported once; later drops are handled the "
                "same way silently)",
                self.label,
                previous,
                raw,
                previous,
                self.GLITCH_READS,
            )
        return 0


class EnergyTracker:
    """One device's energy, never raising: counter, else integrated power, else unknown (see module doc).

    ``read_counter_j`` returns cumulative joules from the vendor counter (raising ``VoltanaHardwareError``);
    ``read_power_w`` returns watts or None; ``source`` is what the counter's joules are (measured, or
    simulated for the simulated GPU).
    """

    def __init__(
        self,
        label: str,
        read_counter_j: Callable[[], float],
        read_power_w: Callable[[], float | None],
        source: EnergySource = EnergySource.MEASURED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.source = source
        self._read_counter_j = read_counter_j
        self._read_power_w = read_power_w
        self._clock = clock
        self._failures = 0
        self._counter_source = source  # what the counter's joules are, kept while falling back
        self._retry_counter = False  # a failing (not missing) counter: try it again on every read
        self._offset_j = (
            0.0  # counter joules + offset = cumulative joules (re-based when the counter resumes)
        )
        self._last_j = 0.0
        self._last_power: tuple[float, float] | None = None  # (monotonic_s, watts) of the last power read
        self._warned: set[str] = set()
        self._read_lock = threading.Lock()
        self.failed_reads = 0

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    def read(self) -> EnergyReading:
        """Cumulative joules now (see :class:`EnergyReading`); never raises; safe from several threads."""
        with self._read_lock:
            return self._read()

    def _read(self) -> EnergyReading:
        if self._retry_counter:
            try:
                value = float(self._read_counter_j())
            except VoltanaHardwareError:
                pass  # still failing: keep integrating power (or unknown) below
            else:
                return self._resume(value)
        if self.source in (EnergySource.MEASURED, EnergySource.SIMULATED):
            try:
                value = float(self._read_counter_j())
            except _MISSING as exc:
                self._fall_back(f"no energy counter ({exc})")
            except VoltanaHardwareError as exc:
                self._failures += 1
                self.failed_reads += 1
                if self._failures < FAILURES_BEFORE_FALLBACK:
                    self._warn_once(
                        "transient",
                        "voltana: reading the energy counter of %s failed (%s); that reading is skipped "
                        "(reported once)",
                        self.label,
                        exc,
                    )
                    return EnergyReading(None, self.source, self._clock())
                self._retry_counter = True
                self._fall_back(
                    f"the energy counter failed {self._failures} times in a row ({exc}; it is retried on "
                    "every read)"
                )
            else:
                self._failures = 0
                self._last_j = value + self._offset_j
                return EnergyReading(self._last_j, self.source, self._clock())
        if self.source is EnergySource.POWER_INTEGRATED:
            return self._integrate()
        return EnergyReading(None, EnergySource.UNKNOWN, self._clock())

    def _resume(self, counter_j: float) -> EnergyReading:
        """The failing counter reads again: continue the cumulative joules from the integrated value."""
        now = self._clock()
        if self.source is EnergySource.POWER_INTEGRATED and self._last_power is not None:
            then, watts_then = self._last_power
            self._last_j += watts_then * max(0.0, now - then)  # up to now at the last power reading
        previous = self.source
        self._offset_j = self._last_j - counter_j  # the counter's own step over the gap is not counted again
        self.source = self._counter_source
        self._retry_counter = False
        self._failures = 0
        self._last_power = None
        self._warn_once(
            "resumed",
            "voltana: the energy counter of %s reads again: energy is measured by it again (the gap was %s) "
            "(reported once)",
            self.label,
            "integrated from power" if previous is EnergySource.POWER_INTEGRATED else "unknown",
        )
        return EnergyReading(self._last_j, self.source, now)

    def _power(self) -> float | None:
        """Watts now; None when there is no power reading at all; raises on a transient failure."""
        try:
            return self._read_power_w()
        except _MISSING:
            return None

    def _fall_back(self, reason: str) -> None:
        try:
            watts = self._power()
        except VoltanaHardwareError as exc:
            watts = None
            reason = f"{reason}; power unreadable too ({exc})"
        if watts is None:
            self.source = EnergySource.UNKNOWN
            self._warn_once(
                "unknown",
                "voltana: %s on %s and no power reading: energy is reported as unknown; clock control "
                "is unaffected",
                reason,
                self.label,
            )
            return
        self.source = EnergySource.POWER_INTEGRATED
        self._last_power = (self._clock(), watts)
        self._warn_once(
            "fallback",
            "voltana: %s on %s: integrating power readings instead (energy source power-integrated, "
            "accuracy limited by the power sensor's averaging); clock control is unaffected",
            reason,
            self.label,
        )

    def _integrate(self) -> EnergyReading:
        try:
            watts = self._power()
        except VoltanaHardwareError as exc:
            self.failed_reads += 1
            self._warn_once(
                "power-transient",
                "voltana: reading power of %s failed (%s); that reading is skipped (reported once)",
                self.label,
                exc,
            )
            return EnergyReading(None, self.source, self._clock())
        now = self._clock()
        if watts is None:
            self.source = EnergySource.UNKNOWN
            self._warn_once(
                "unknown", "voltana: power of %s is no longer readable: energy unknown", self.label
            )
            return EnergyReading(None, EnergySource.UNKNOWN, now)
        if self._last_power is not None:
            then, watts_then = self._last_power
            self._last_j += 0.5 * (watts + watts_then) * max(0.0, now - then)
        self._last_power = (now, watts)
        return EnergyReading(self._last_j, self.source, now)
