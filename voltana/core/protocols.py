"""The seams between the layers, as Protocols: what the engine runtime and the simulator need of a frequency
controller, a clock applier, an instance's energy meter and a GPU group.

Core defines them and knows no implementation; the implementations live above it:

- :class:`Controller`: ``voltana.core.controller.FrequencyController``;
- :class:`ClockApplier`: ``voltana.hardware.applier.ClockApplier`` (a worker thread that locks clocks);
- :class:`InstanceEnergyMeter`: ``voltana.adapters.energy_accounting.EnergyAccounting`` (apportions an
  instance's counter energy over iterations, requests and idle time; not ``voltana.hardware.energy``'s
  ``EnergyMeter``, which only reads energy windows of a group);
- :class:`DeviceGroup`: ``voltana.hardware.device.GpuGroup`` and its subclasses (NVML, AMD SMI, simulated,
  through ``voltana clockd``).

Units are in the names: ``_mhz`` SM clock, ``_j`` energy, ``_w`` power, ``_s`` seconds.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    EnergySource,
    IterationRecord,
    RequestRecord,
)


class Controller(Protocol):
    """Chooses the SM clock of one engine instance for every iteration and learns from each result.

    Neither method raises into the engine: a failing policy yields the max clock, a failing observer is
    logged once. Both run on the per-iteration path (microseconds).
    """

    @property
    def allowed_clocks_mhz(self) -> tuple[int, ...]:
        """The ascending, non-empty clock set every decision is drawn from (MHz)."""
        ...

    @property
    def policy(self) -> str:
        """The name of the clock policy the controller calls."""
        ...

    @property
    def power_model(self) -> Any | None:
        """The energy model the controller learns (``observe_iteration(snapshot, clock_mhz, energy_j)``), or
        None; the runtime feeds it energies that settle after the iteration's record was made."""
        ...

    def decide(self, snapshot: BatchSnapshot) -> ClockDecision:
        """The clock for the iteration described by ``snapshot`` (one of ``allowed_clocks_mhz``)."""
        ...

    def observe(self, record: IterationRecord) -> None:
        """Learn from the finished iteration in ``record`` (measured latency, energy when known)."""
        ...

    def set_clock_ceiling(self, clock_mhz: int | None) -> None:
        """Hold later decisions at or below ``clock_mhz`` (MHz; a power-budget ceiling), None lifts it."""
        ...


class ClockApplier(Protocol):
    """Applies submitted SM clocks to a GPU group off the per-iteration path.

    ``submit`` never blocks and never raises. ``applied_clock_mhz`` / ``read_back_clock_mhz``: the clock the
    GPUs read back after the last successful lock (the driver may arbitrate), None before the first one.
    """

    @property
    def applied_clock_mhz(self) -> int | None:
        """The clock read back after the last successful lock (MHz), or None."""
        ...

    @property
    def read_back_clock_mhz(self) -> int | None:
        """Same as ``applied_clock_mhz`` where the applier reads the clock back (MHz), or None."""
        ...

    def submit(self, clock_mhz: int) -> None:
        """Ask for ``clock_mhz``; returns at once (repeats are free, the latest target of a burst wins)."""
        ...

    def close(self) -> None:
        """Stop the worker and restore the clocks it changed (idempotent)."""
        ...


class EnergyLedgerView(Protocol):
    """The running totals of an instance's energy ledger (``voltana.core.energy_ledger.EnergyLedger``)."""

    @property
    def total_j(self) -> float:
        """Counter energy apportioned so far (J)."""
        ...

    @property
    def idle_j(self) -> float:
        """The part of ``total_j`` that fell on idle time (J)."""
        ...


class LearnedEnergySample(Protocol):
    """An iteration whose measured energy settled after its record was made (teaches the energy model)."""

    @property
    def snapshot(self) -> BatchSnapshot:
        """The iteration's batch."""
        ...

    @property
    def clock_mhz(self) -> int:
        """The clock it ran at (MHz)."""
        ...

    @property
    def energy_j(self) -> float:
        """Its settled energy (J)."""
        ...


class InstanceEnergyMeter(Protocol):
    """Apportions one instance's energy (measured, power-integrated or simulated) over its iterations, its
    requests and idle time. The engine-thread methods are cheap and never call a driver."""

    @property
    def source(self) -> EnergySource:
        """Where the joules come from now."""
        ...

    @property
    def ledger(self) -> EnergyLedgerView:
        """Running totals (J)."""
        ...

    @property
    def learned(self) -> deque[Any]:
        """Settled iterations (:class:`LearnedEnergySample`) not yet fed to the energy model; the runtime
        pops them on the engine thread."""
        ...

    def dispatching(self, t_s: float) -> None:
        """A forward starts at ``t_s`` while none is in flight."""
        ...

    def iteration(
        self, start_s: float, end_s: float, snapshot: BatchSnapshot, clock_mhz: int, busy_after: bool
    ) -> float | None:
        """An iteration ran over ``[start_s, end_s]`` (s) at ``clock_mhz``: its energy (J) when settled now,
        else None (settled later)."""
        ...

    def request_finished(self, record: RequestRecord) -> RequestRecord | None:
        """``record`` left the instance: it with its energy when settled now, else None (emitted later)."""
        ...

    def forget(self, request_id: str) -> None:
        """Drop a request's energy account (aborted or reported elsewhere)."""
        ...

    def close(self) -> None:
        """Settle and emit what is left; stop any sampler thread (idempotent)."""
        ...


class DeviceGroup(Protocol):
    """The GPUs of one engine instance (tensor parallel), moving together.

    Driver calls (``lock_clock_mhz``, ``reset_clocks``, reads) may block for milliseconds and raise
    ``voltana.hardware.errors.VoltanaHardwareError``: never call them on the per-iteration path.
    """

    @property
    def vendor(self) -> str:
        """``nvidia``, ``amd``, ``simulated``, ... (one vendor per group)."""
        ...

    @property
    def energy_source(self) -> EnergySource:
        """The weakest member's energy source."""
        ...

    @property
    def energy_refresh_s(self) -> float:
        """The slowest member's energy-counter refresh period (s)."""
        ...

    def __len__(self) -> int:
        """Number of GPUs."""
        ...

    def supported_clocks_mhz(self) -> tuple[int, ...]:
        """Clocks every member accepts, ascending (MHz)."""
        ...

    def current_clock_mhz(self) -> int:
        """The lowest current clock among members (MHz)."""
        ...

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        """Lock every member at ``clock_mhz``; the lowest clock read back (MHz)."""
        ...

    def reset_clocks(self) -> None:
        """Give every member's clock back to the driver."""
        ...

    def set_power_limit_w(self, limit_w: float) -> float:
        """Set every member's power limit (W per GPU); the lowest limit read back (W). Raises the driver's
        ``NotSupportedError``, ``NoPermissionError`` or ``InvalidArgumentError`` (out of range)."""
        ...

    def reset_power_limit(self) -> None:
        """Restore every member's default power limit."""
        ...

    def energy_j(self) -> float:
        """Cumulative energy of all members (J)."""
        ...

    def power_w(self) -> float | None:
        """Summed power (W); None when a member cannot report it."""
        ...

    def close(self) -> None:
        """Release the devices."""
        ...
