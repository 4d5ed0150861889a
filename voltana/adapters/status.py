"""What an engine instance exposes about voltana: :class:`RuntimeStatus`, read by the state payload, the
iteration trace and benchmarks (its own module so that they need not import the runtime)."""

from __future__ import annotations

from dataclasses import dataclass

from voltana.core.types import EnergySource


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    """What the instance exposes about voltana (for /metrics, the router and benchmarks)."""

    instance_id: str
    role: str
    monitor_only: bool
    monitor_only_reason: str
    sm_clock_mhz: int | None
    policy: str
    iterations: int
    hook_time_s: float
    energy_source: EnergySource = EnergySource.UNKNOWN
    energy_j: float = 0.0
    """Counter energy apportioned so far (J, all GPUs): iterations plus idle."""
    idle_energy_j: float = 0.0
    """The part of ``energy_j`` that fell between iterations (J): the instance's idle energy."""
    clock_ceiling_mhz: int | None = None
    """The power-budget clock ceiling in force (MHz; None: none, or its lease lapsed)."""
    allowed_clocks_mhz: tuple[int, ...] = ()
    """Every clock a controller may choose (ascending MHz; empty when monitor-only)."""

    @property
    def hook_time_per_iteration_s(self) -> float:
        """Mean time voltana spent in before+after per iteration (s)."""
        return self.hook_time_s / self.iterations if self.iterations else 0.0
