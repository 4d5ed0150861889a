"""Hot-path aggregates: plain Python sums per instance, read by the exporter thread at collection time.

The per-iteration path only adds numbers into an :class:`InstanceAggregate` (well under a microsecond per
field, no locks, no allocation once the instance's clocks and reasons have been seen). Readers copy the
dictionaries (``dict.copy`` is atomic under the GIL) and never write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.core.types import EnergySource, IterationRecord, Phase

PREDICTOR_EWMA_WEIGHT = 0.05
"""Weight of the newest sample in the relative-error moving average (about the last 20 iterations)."""


@dataclass(slots=True)
class InstanceAggregate:
    """Running totals of one instance (one phase), since telemetry started.

    Invariants: ``energy_j`` and ``busy_s`` only grow; ``sum(residency_s.values()) == busy_s`` up to rounding.
    """

    instance_id: str
    phase: Phase
    iterations: int = 0
    energy_j: float = 0.0
    busy_s: float = 0.0
    last_power_w: float | None = None
    applied_clock_mhz: int | None = None
    clock_changes: int = 0
    residency_s: dict[int, float] = field(default_factory=dict)
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)
    predictor_abs_error_s: float = 0.0
    predictions: int = 0
    predictor_relative_error: float | None = None
    energy_source: EnergySource = EnergySource.UNKNOWN

    def add(self, record: IterationRecord) -> None:
        """Fold one finished iteration into the totals (the hot path)."""
        latency_s = record.latency_s
        clock_mhz = record.applied_clock_mhz
        self.iterations += 1
        self.busy_s += latency_s
        energy_j = record.energy_j
        counter_j = record.counter_energy_j
        if counter_j is not None:  # measured: the counter's settled joules, idle included
            self.energy_j += counter_j
        elif energy_j is not None:
            self.energy_j += energy_j
        if energy_j is not None and latency_s > 0:
            self.last_power_w = energy_j / latency_s
        self.energy_source = record.energy_source
        if self.applied_clock_mhz is not None and clock_mhz != self.applied_clock_mhz:
            self.clock_changes += 1
        self.applied_clock_mhz = clock_mhz
        residency = self.residency_s
        residency[clock_mhz] = residency.get(clock_mhz, 0.0) + latency_s
        decision = record.decision
        key = (decision.reason.value, decision.policy)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        predicted_s = decision.predicted_latency_s
        if predicted_s is not None and latency_s > 0:
            abs_error_s = abs(predicted_s - latency_s)
            self.predictor_abs_error_s += abs_error_s
            self.predictions += 1
            relative = abs_error_s / latency_s
            previous = self.predictor_relative_error
            self.predictor_relative_error = (
                relative if previous is None else previous + PREDICTOR_EWMA_WEIGHT * (relative - previous)
            )


class Aggregates:
    """All instances' aggregates of this process, keyed by (instance id, phase)."""

    __slots__ = ("_by_instance",)

    def __init__(self) -> None:
        self._by_instance: dict[tuple[str, Phase], InstanceAggregate] = {}

    def add(self, record: IterationRecord) -> None:
        """Fold ``record`` into its instance's aggregate, creating it on first sight."""
        snapshot = record.snapshot
        key = (snapshot.instance_id, snapshot.phase)
        aggregate = self._by_instance.get(key)
        if aggregate is None:
            aggregate = self._by_instance.setdefault(key, InstanceAggregate(key[0], key[1]))
        aggregate.add(record)

    def snapshot(self) -> list[InstanceAggregate]:
        """The aggregates, for a reader (the objects are live: read, never write)."""
        return list(self._by_instance.copy().values())
