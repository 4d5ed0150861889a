"""The engine-neutral per-instance runtime both engine adapters (vLLM, SGLang) drive once per iteration.

It owns the instance's GPU group, clock applier, energy accounting and frequency controller(s). The adapter
calls :meth:`InstanceRuntime.before_iteration` right before the forward and
:meth:`InstanceRuntime.after_iteration` when that iteration's output is back, in the same order (a pipelining
engine may call ``before`` twice before the first ``after``). Invariants: no method raises into the engine;
any failure of clock control degrades the runtime to monitor-only (latency still measured, clocks never
touched) with exactly one loud log line; energy is never read on the engine thread (see
:mod:`voltana.adapters.energy_accounting`), and a missing or failing energy counter never touches clock
control. The applied clock everywhere (records, status, predictor updates,
residency) is the clock the GPU read back after the lock, not the one asked for.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from voltana.adapters.energy_accounting import EnergyAccounting
from voltana.adapters.iteration_trace import IterationTrace
from voltana.adapters.status import RuntimeStatus
from voltana.core import hookspecs
from voltana.core.config import VoltanaConfig
from voltana.core.protocols import ClockApplier, Controller, DeviceGroup, InstanceEnergyMeter
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    EnergySource,
    IterationRecord,
    Phase,
    RequestRecord,
)
from voltana.hardware.applier import ClockApplier as ThreadedClockApplier
from voltana.hardware.device import GpuGroup
from voltana.hardware.select import open_devices
from voltana.hardware.simulated import PerformanceModel, SimulatedGpu, performance_model
from voltana.hardware.watchdog import start_watchdog
from voltana.plugins import get_plugin_manager
from voltana.plugins.ecofreq.factory import build_controller
from voltana.plugins.telemetry import configure_telemetry

log = logging.getLogger("voltana.runtime")

MONITOR_ONLY_POLICY = "monitor-only"


_ClockTotals = dict[int, tuple[float, int]]
"""Per clock (MHz): (seconds, iterations) run at it since the runtime started, summed over iterations."""


@dataclass(slots=True)
class _RequestAccount:
    """Clock residency accumulated for one request while it runs on this instance (its energy is settled by
    the energy accounting).

    Residency is settled per segment (a run of consecutive iterations the request is in): ``segment_start``
    holds the instance's clock totals when the open segment began (None when none is open), and the
    segment's residency is the difference of the totals when it closes, added to ``clock_residency_s``.
    """

    arrival_time_s: float
    first_token_time_s: float | None = None
    clock_residency_s: dict[int, float] = field(default_factory=dict)
    segment_start: _ClockTotals | None = None


@dataclass(slots=True)
class _Pending:
    """An iteration handed to the engine and not yet reported back."""

    snapshot: BatchSnapshot
    decision: ClockDecision
    dispatch_s: float  # perf_counter when the forward could start (end of before_iteration)
    wall_start_s: float  # the adapter's clock (snapshot.now_s) for the IterationRecord


class InstanceRuntime:
    """One engine instance's voltana: decide a clock per iteration, apply it, measure, attribute energy.

    ``phase`` is the instance's P/D role; None means a mixed (non-disaggregated) instance, which keeps a
    controller per phase and picks by each snapshot's phase.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        phase: Phase | None,
        hook: pluggy.HookRelay,
        controllers: Mapping[Phase, Controller] | None = None,
        devices: DeviceGroup | None = None,
        applier: ClockApplier | None = None,
        energy: InstanceEnergyMeter | None = None,
        perf_model: PerformanceModel | None = None,
        monitor_only_reason: str = "",
        model_name: str = "",
        trace: Callable[[IterationRecord, RuntimeStatus], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.instance_id = instance_id
        self.phase = phase
        self.model_name = model_name
        self._hook = hook
        self._controllers: dict[Phase, Controller] = dict(controllers or {})
        self._ceiling_mhz: int | None = None
        self._devices: DeviceGroup | None = devices
        self._applier: ClockApplier | None = applier
        self._energy: InstanceEnergyMeter | None = energy
        self._perf_model = perf_model
        self._trace = trace
        self._clock = clock
        self._monitor_only_reason = monitor_only_reason
        self._pending: deque[_Pending] = deque()
        self._accounts: dict[str, _RequestAccount] = {}
        self._running: set[str] = set()  # requests of the last closed iteration: their segments are open
        self._clock_totals: _ClockTotals = {}
        self._last_end_s = 0.0
        self._counted_j = 0.0  # instance energy already handed out in records (J)
        self._iterations = 0
        self._hook_time_s = 0.0
        self._failure_logged = False
        first = next(iter(self._controllers.values()), None)
        self._policy = first.policy if first is not None else ""
        if monitor_only_reason or not self._controllers:
            self._monitor_only_reason = monitor_only_reason or "no frequency controller"
        self._default_clock_mhz = _default_clock_mhz(devices, perf_model)
        self._pinned_mhz: int | None = None  # a client's pin (profiling) overrides the policy
        self._iteration_observers: list[Callable[[IterationRecord], None]] = []
        self._request_observers: list[Callable[[RequestRecord], None]] = []

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def start(
        cls,
        config: VoltanaConfig,
        phase: Phase | None,
        instance_id: str,
        *,
        model_name: str = "",
        hook: pluggy.HookRelay | None = None,
    ) -> InstanceRuntime:
        """Open the GPUs, start the applier and build the controller(s); never raises.

        A GPU library that is missing, a driver that refuses, or a controller that cannot be built gives a
        monitor-only runtime and one ERROR log line saying why and what still works.
        """
        if hook is None:
            hook = _plugin_hook_or_null()
        common: dict[str, Any] = {
            "instance_id": instance_id,
            "phase": phase,
            "hook": hook,
            "model_name": model_name,
            "trace": _open_trace(config),
        }
        _start_telemetry(config)
        try:
            devices = _open_devices(config, hook)
        except Exception as exc:
            local = getattr(exc, "local_group", None)  # clockd serves other GPUs: still measure our own
            if local is None:
                return cls._monitor_only(f"GPU control unavailable: {_one_line(exc)}", **common)
            perf_model = _performance_model(config, local)
            runtime = cls._monitor_only(
                f"GPU control refused: {_one_line(exc)}", devices=local, perf_model=perf_model, **common
            )
            runtime._energy = _start_energy(runtime, config, local, perf_model)
            return runtime
        perf_model = _performance_model(config, devices)
        try:
            controllers = {
                p: _build_controller(config, p, instance_id, perf_model, hook, devices)
                for p in ((phase,) if phase else (Phase.PREFILL, Phase.DECODE))
            }
        except Exception as exc:
            reason = f"no frequency controller: {_one_line(exc)}"
            runtime = cls._monitor_only(reason, devices=devices, perf_model=perf_model, **common)
            runtime._energy = _start_energy(runtime, config, devices, perf_model)
            return runtime
        runtime = cls(controllers=controllers, devices=devices, perf_model=perf_model, **common)
        try:
            runtime._applier = ThreadedClockApplier(
                devices,
                restore_on_exit=config.hardware.restore_clocks_on_exit,
                on_monitor_only=runtime._applier_gave_up,
                watchdog=_start_watchdog(config, devices),
                name=f"voltana-clock-{instance_id}",
                power_limit_w=config.hardware.power_limit_w,
            )
        except Exception as exc:
            runtime._degrade(f"clock applier could not start: {_one_line(exc)}")
        runtime._energy = _start_energy(runtime, config, devices, perf_model)  # baseline: ready to serve
        if runtime.monitor_only:
            return runtime
        log.info(
            "voltana (%s, %s): clock control active on %s, policy %s",
            instance_id,
            runtime.role,
            devices.vendor,
            runtime._policy,
        )
        return runtime

    @classmethod
    def _monitor_only(cls, reason: str, **kwargs: Any) -> InstanceRuntime:
        runtime = cls(monitor_only_reason=reason, **kwargs)
        log.error(
            "voltana (%s, %s): %s; serving continues monitor-only (no clock changes)",
            runtime.instance_id,
            runtime.role,
            reason,
        )
        return runtime

    @classmethod
    def monitor_only_runtime(
        cls, instance_id: str, phase: Phase | None, reason: str, *, model_name: str = ""
    ) -> InstanceRuntime:
        """A runtime that only measures (e.g. the config is invalid); logs ``reason`` once as an ERROR."""
        return cls._monitor_only(
            reason, instance_id=instance_id, phase=phase, hook=_plugin_hook_or_null(), model_name=model_name
        )

    # ------------------------------------------------------------------------------------- hot path

    @property
    def role(self) -> str:
        """``prefill``, ``decode`` or ``mixed``."""
        return self.phase.value if self.phase else "mixed"

    @property
    def monitor_only(self) -> bool:
        """True when clocks are never changed (a failure, or no controller)."""
        return bool(self._monitor_only_reason)

    def before_iteration(self, snapshot: BatchSnapshot) -> ClockDecision:
        """Decide (and submit, non-blocking) the clock for the iteration about to run; never raises."""
        t0 = self._clock()
        try:
            decision = self._decide(snapshot)
            if self._applier is not None and not self._monitor_only_reason:
                self._applier.submit(decision.clock_mhz)
        except Exception as exc:
            self._fail(f"iteration hook failed: {_one_line(exc)}")
            decision = self._monitor_decision()
        t1 = self._clock()
        if self._energy is not None and not self._pending:
            self._energy.dispatching(max(t1, self._last_end_s))
        self._pending.append(_Pending(snapshot, decision, t1, snapshot.now_s))
        self._hook_time_s += t1 - t0
        return decision

    def after_iteration(self, first_token_request_ids: Iterable[str] = ()) -> IterationRecord | None:
        """Close the oldest pending iteration: latency, energy, predictor/telemetry, per-request energy.

        Latency runs from when the forward could start (its dispatch, or the previous iteration's end when
        the engine pipelines) to now. Returns the record, or None if nothing was pending or it failed.
        """
        t_end = self._clock()
        if not self._pending:
            return None
        pending = self._pending.popleft()
        record: IterationRecord | None = None
        try:
            start_s = max(pending.dispatch_s, self._last_end_s)
            latency_s = max(0.0, t_end - start_s)
            self._last_end_s = t_end
            applied = self._applied_clock_mhz(pending.decision)
            energy_j, source, counter_j = self._iteration_energy_j(start_s, t_end, pending.snapshot, applied)
            record = IterationRecord(
                snapshot=pending.snapshot,
                decision=pending.decision,
                applied_clock_mhz=applied,
                start_time_s=pending.wall_start_s,
                latency_s=latency_s,
                energy_j=energy_j,
                energy_source=source,
                counter_energy_j=counter_j,
            )
            controller = self._controllers.get(pending.snapshot.phase)
            if controller is not None and not self._monitor_only_reason:
                controller.observe(
                    record
                )  # updates the predictor, then broadcasts voltana_iteration_finished
            else:
                self._hook.voltana_iteration_finished(record=record)
            self._account(record, first_token_request_ids)
            for observer in self._iteration_observers:
                observer(record)
            self._iterations += 1
            if self._trace is not None:
                self._trace(record, self.status())
        except Exception as exc:
            self._fail(f"iteration report failed: {_one_line(exc)}")
        self._hook_time_s += self._clock() - t_end
        return record

    def request_finished(
        self,
        request_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        finish_time_s: float,
        trace_headers: Mapping[str, str] | None = None,
    ) -> RequestRecord | None:
        """A request left this instance: emit ``voltana_request_finished`` with its energy; never raises.

        Returns the record when its energy is settled now (a simulated GPU, or no energy accounting), else
        None: with a measured GPU the sampler thread emits it once the counter has covered its last
        iteration (within about two refresh periods). None also for a request this runtime never saw.

        ``trace_headers`` are the request's incoming W3C headers (``traceparent``), so telemetry joins this
        phase's span to the request's trace.
        """
        account = self._accounts.pop(request_id, None)
        if account is None:
            return None
        if request_id in self._running:
            self._running.discard(request_id)
            self._close_segment(account)
        record = RequestRecord(
            request_id=request_id,
            phase=self.phase or (Phase.DECODE if output_tokens > 1 else Phase.PREFILL),
            instance_id=self.instance_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            arrival_time_s=account.arrival_time_s,
            first_token_time_s=account.first_token_time_s,
            finish_time_s=finish_time_s,
            energy_j=0.0,
            clock_residency_s=account.clock_residency_s,  # the account is gone: hand its dict over
            model=self.model_name,
            trace_headers=dict(trace_headers) if trace_headers else {},
            energy_source=EnergySource.UNKNOWN,
        )
        energy = self._energy
        if energy is None:
            self._emit_request(record)
            return record
        try:
            settled: RequestRecord | None = energy.request_finished(record)
        except Exception as exc:
            log.warning("voltana: request energy accounting failed: %s", _one_line(exc))
            self._emit_request(record)
            return record
        if settled is not None:  # settled now (simulated GPU); otherwise the sampler thread emits it later
            self._emit_request(settled)
        return settled

    def _emit_request(self, record: RequestRecord) -> None:
        """Broadcast a finished request (from the sampler thread when its energy was settled there)."""
        try:
            self._hook.voltana_request_finished(record=record)
        except Exception as exc:
            log.warning("voltana: a voltana_request_finished plugin failed: %s", _one_line(exc))
        for observer in self._request_observers:
            try:
                observer(record)
            except Exception as exc:
                log.warning("voltana: a finished-request observer failed: %s", _one_line(exc))

    def forget_request(self, request_id: str) -> None:
        """Drop a request's accounting without reporting it (it was already reported, or was aborted)."""
        self._accounts.pop(request_id, None)
        self._running.discard(request_id)
        if self._energy is not None:
            self._energy.forget(request_id)

    @property
    def allowed_clocks_mhz(self) -> tuple[int, ...]:
        """Every clock a controller of this runtime may choose (ascending MHz; empty when monitor-only)."""
        if self.monitor_only:
            return ()
        return tuple(sorted({c for ctl in self._controllers.values() for c in ctl.allowed_clocks_mhz}))

    @property
    def pinned_clock_mhz(self) -> int | None:
        """The pinned clock (MHz), or None when the policy decides."""
        return self._pinned_mhz

    def pin_clock(self, clock_mhz: int | None) -> None:
        """Pin every iteration's clock to ``clock_mhz`` (None: back to the policy). The pin still goes
        through the clock applier and is read back like any decision. Raises ValueError (one line) when
        the clock is not allowed or clock control is off."""
        if clock_mhz is not None:
            if self.monitor_only:
                raise ValueError(f"clock control is off ({self._monitor_only_reason})")
            if clock_mhz not in self.allowed_clocks_mhz:
                raise ValueError(f"{clock_mhz} MHz is not an allowed clock {list(self.allowed_clocks_mhz)}")
        self._pinned_mhz = clock_mhz

    @property
    def clock_ceiling_mhz(self) -> int | None:
        """The power-budget ceiling in force (MHz), or None."""
        return self._ceiling_mhz

    def set_clock_ceiling(self, clock_mhz: int | None) -> None:
        """Hold every controller's decisions at or below ``clock_mhz`` (None lifts it); a pin is not held."""
        self._ceiling_mhz = clock_mhz
        for controller in self._controllers.values():
            controller.set_clock_ceiling(clock_mhz)

    def add_iteration_observer(self, observer: Callable[[IterationRecord], None]) -> None:
        """Call ``observer(record)`` after every iteration (hot path: it must be cheap and not raise)."""
        self._iteration_observers.append(observer)

    def add_request_observer(self, observer: Callable[[RequestRecord], None]) -> None:
        """Call ``observer(record)`` for every finished request once its energy is settled: on the engine
        thread for a simulated GPU, from the energy sampler thread for a measured one (it must be cheap and
        thread-safe); a request whose energy is unknown carries ``energy_source`` UNKNOWN."""
        self._request_observers.append(observer)

    @property
    def measures_energy(self) -> bool:
        """True when this instance accounts energy (measured, power-integrated or simulated); requests'
        ``energy_j`` is then known unless their ``energy_source`` says UNKNOWN."""
        energy = self._energy
        return energy is not None and energy.source != EnergySource.UNKNOWN

    def status(self) -> RuntimeStatus:
        """A consistent view of this runtime (cheap: no driver call)."""
        energy = self._energy
        ledger = energy.ledger if energy is not None else None
        return RuntimeStatus(
            instance_id=self.instance_id,
            role=self.role,
            monitor_only=self.monitor_only,
            monitor_only_reason=self._monitor_only_reason,
            sm_clock_mhz=self._applied_clock_mhz(None) or None,
            policy=MONITOR_ONLY_POLICY if self.monitor_only else self._policy,
            iterations=self._iterations,
            hook_time_s=self._hook_time_s,
            energy_source=energy.source if energy is not None else EnergySource.UNKNOWN,
            energy_j=ledger.total_j if ledger is not None else 0.0,
            idle_energy_j=ledger.idle_j if ledger is not None else 0.0,
            clock_ceiling_mhz=self._ceiling_mhz,
            allowed_clocks_mhz=self.allowed_clocks_mhz,
        )

    def close(self) -> None:
        """Restore clocks (the applier does), settle energy, release the devices; idempotent, never raises."""
        applier, self._applier = self._applier, None
        energy, self._energy = self._energy, None
        devices, self._devices = self._devices, None
        for closer in (applier, energy, devices, self._trace):
            close = getattr(closer, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:
                log.warning("voltana: closing %s failed: %s", type(closer).__name__, _one_line(exc))

    # ------------------------------------------------------------------------------------- internals

    def _decide(self, snapshot: BatchSnapshot) -> ClockDecision:
        if self._monitor_only_reason:
            return self._monitor_decision()
        if self._pinned_mhz is not None:
            return ClockDecision(self._pinned_mhz, DecisionReason.PINNED, self._policy)
        controller = self._controllers.get(snapshot.phase)
        if controller is None:  # a pure-phase instance always uses its own controller
            controller = next(iter(self._controllers.values()))
        decision = controller.decide(snapshot)
        if self.phase is None and snapshot.phase is Phase.PREFILL:
            decision = self._guard_decodes_in_mixed_batch(snapshot, decision)
        return decision

    def _guard_decodes_in_mixed_batch(
        self, snapshot: BatchSnapshot, decision: ClockDecision
    ) -> ClockDecision:
        """A mixed batch also carries decode steps (one new token after a context): their ITL bounds it too,
        so the clock is the higher of the TTFT-path and the ITL-path decisions."""
        decodes = [r for r in snapshot.requests if r.new_tokens == 1 and r.context_tokens > 0]
        if not decodes:
            return decision
        sub = BatchSnapshot.build(
            Phase.DECODE,
            decodes,
            snapshot.now_s,
            iteration=snapshot.iteration,
            instance_id=snapshot.instance_id,
        )
        itl_decision = self._controllers[Phase.DECODE].decide(sub)
        return itl_decision if itl_decision.clock_mhz > decision.clock_mhz else decision

    def _monitor_decision(self) -> ClockDecision:
        return ClockDecision(self._applied_clock_mhz(None), DecisionReason.MONITOR_ONLY, MONITOR_ONLY_POLICY)

    def _applied_clock_mhz(self, decision: ClockDecision | None) -> int:
        """The clock the GPUs run at: read back after the applier's lock (the driver may arbitrate: asked
        1410, runs 1200), else the decision, else the default clock."""
        applier = self._applier
        if applier is not None:
            read_back = applier.read_back_clock_mhz or applier.applied_clock_mhz
            if read_back:
                return int(read_back)
        if decision is not None and decision.clock_mhz and not self._monitor_only_reason:
            return decision.clock_mhz
        return self._default_clock_mhz

    def _iteration_energy_j(
        self, start_s: float, end_s: float, snapshot: BatchSnapshot, clock_mhz: int
    ) -> tuple[float | None, EnergySource, float | None]:
        """Report the iteration to the energy accounting: its energy now (simulated GPU) or None (settled by
        the sampler later), its source, and the instance energy settled since the previous record (J, idle
        included); learnable energies the sampler settled meanwhile teach the predictor here."""
        energy = self._energy
        if energy is None:
            return None, EnergySource.UNKNOWN, None
        energy_j = energy.iteration(start_s, end_s, snapshot, clock_mhz, busy_after=bool(self._pending))
        learned = energy.learned
        while learned:
            item = learned.popleft()
            controller = self._controllers.get(item.snapshot.phase)
            power_model = controller.power_model if controller is not None else None
            if power_model is not None and item.snapshot.requests and not self._monitor_only_reason:
                power_model.observe_iteration(item.snapshot, item.clock_mhz, item.energy_j)
        total_j = energy.ledger.total_j  # a float the sampler thread writes: read once
        counter_j, self._counted_j = total_j - self._counted_j, total_j
        return energy_j, energy.source, counter_j

    def _account(self, record: IterationRecord, first_token_request_ids: Iterable[str]) -> None:
        """Add this iteration's time at its clock to the instance and open/close request segments.

        O(batch size) with a small constant: clock residency is summed once per iteration into the instance's
        clock totals, and a request's residency is settled when its run of consecutive iterations ends (set
        differences). Energy shares are the energy accounting's (:mod:`voltana.core.energy_ledger`).
        """
        snapshot = record.snapshot
        accounts, totals = self._accounts, self._clock_totals
        request_ids = [request.request_id for request in snapshot.requests]
        current = set(request_ids)
        previous = self._running
        for request_id in previous - current:  # their segments ended with the previous iteration
            account = accounts.get(request_id)
            if account is not None:
                self._close_segment(account)
        joined = current - previous
        if joined:
            start = dict(totals)  # shared, never mutated: the totals before this iteration
            requests = snapshot.requests
            for request_id in joined:
                account = accounts.get(request_id)
                if account is None:  # first time here: its arrival time is in the snapshot
                    arrival_s = requests[request_ids.index(request_id)].arrival_time_s
                    account = accounts[request_id] = _RequestAccount(arrival_s)
                account.segment_start = start
        clock, latency_s = record.applied_clock_mhz, record.latency_s
        seconds, iterations = totals.get(clock, (0.0, 0))
        totals[clock] = (seconds + latency_s, iterations + 1)
        self._running = current
        end_s = record.start_time_s + latency_s
        for request_id in first_token_request_ids:
            account = accounts.get(request_id)
            if account is not None and account.first_token_time_s is None:
                account.first_token_time_s = end_s

    def _close_segment(self, account: _RequestAccount) -> None:
        """Add the clock totals accrued since ``account``'s open segment began to its residency (s)."""
        start = account.segment_start
        if start is None:
            return
        account.segment_start = None
        residency = account.clock_residency_s
        for clock, (seconds, iterations) in self._clock_totals.items():
            start_s, start_iterations = start.get(clock, (0.0, 0))
            if iterations > start_iterations:
                residency[clock] = residency.get(clock, 0.0) + (seconds - start_s)

    def _applier_gave_up(self, reason: str) -> None:
        """The applier hit a driver error and logged it: record monitor-only without a second log line."""
        if not self._monitor_only_reason:
            self._monitor_only_reason = f"clock control disabled by a driver error: {reason}"

    def _fail(self, reason: str) -> None:
        """A hot-path failure: the first one is logged (once), and clock control stops."""
        if not self._failure_logged:
            self._failure_logged = True
            if self._monitor_only_reason:
                log.error("voltana (%s, %s): %s; monitoring continues", self.instance_id, self.role, reason)
        self._degrade(reason)

    def _degrade(self, reason: str) -> None:
        if self._monitor_only_reason:
            return
        self._monitor_only_reason = reason
        log.error(
            "voltana (%s, %s): %s; serving continues monitor-only (no clock changes)",
            self.instance_id,
            self.role,
            reason,
        )
        applier, self._applier = self._applier, None
        if applier is not None:
            try:
                applier.close()
            except Exception as exc:
                log.warning("voltana: restoring clocks failed: %s", _one_line(exc))


# ----------------------------------------------------------------------------------------- wiring


def _start_telemetry(config: VoltanaConfig) -> None:
    """Start this process's telemetry from ``[telemetry]``; a failure costs one warning, never serving."""
    try:
        configure_telemetry(config)
    except Exception as exc:
        log.warning("voltana: telemetry is off: %s", _one_line(exc))


def _plugin_hook_or_null() -> pluggy.HookRelay:
    try:
        return get_plugin_manager().hook
    except Exception as exc:
        log.error(
            "voltana: plugins could not be loaded (%s); iteration and request hooks are off", _one_line(exc)
        )
        empty = pluggy.PluginManager(hookspecs.PROJECT_NAME)  # voltana's hooks, no plugin behind them
        empty.add_hookspecs(hookspecs)
        return empty.hook


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _performance_model(config: VoltanaConfig, devices: DeviceGroup) -> PerformanceModel | None:
    """The physics model: the simulated group's own, else the configured profile (seeds the predictor)."""
    if isinstance(devices, GpuGroup) and isinstance(devices.devices[0], SimulatedGpu):
        return devices.devices[0].model
    try:
        return performance_model(config.hardware.simulated_gpu, config.hardware.simulated_model)
    except Exception as exc:
        log.warning("voltana: no performance model for seeding (%s)", _one_line(exc))
        return None


def _open_devices(config: VoltanaConfig, hook: pluggy.HookRelay) -> DeviceGroup:
    return open_devices(config.hardware, hook if hasattr(hook, "voltana_register_hardware") else None)


def _build_controller(
    config: VoltanaConfig,
    phase: Phase,
    instance_id: str,
    model: PerformanceModel | None,
    hook: pluggy.HookRelay,
    devices: DeviceGroup,
) -> Controller:
    return build_controller(config, phase, instance_id, model, hook, devices.supported_clocks_mhz())


def _start_energy(
    runtime: InstanceRuntime, config: VoltanaConfig, devices: DeviceGroup, perf_model: PerformanceModel | None
) -> InstanceEnergyMeter | None:
    """The instance's energy accounting (sampler thread for a real GPU); None, with a warning, if it cannot
    start: energy is then unknown, clock control is unaffected."""
    try:
        return EnergyAccounting(
            devices,
            perf_model,
            runtime._emit_request,
            period_s=config.hardware.energy_sample_period_s,
            clock=lambda: runtime._clock(),  # noqa: PLW0108 - tests swap runtime._clock after start
            name=f"voltana-energy-{runtime.instance_id}",
        )
    except Exception as exc:
        log.warning("voltana: energy is not measured (%s); clock control is unaffected", _one_line(exc))
        return None


def _start_watchdog(config: VoltanaConfig, devices: DeviceGroup) -> Any | None:
    """The clock-restore watchdog process (``hardware.watchdog``; not for a simulated GPU, which lives in
    this process, nor through ``voltana clockd``, which resets when the engine's connection drops); None,
    with a warning, if it cannot start."""
    hardware = config.hardware
    if not hardware.watchdog or not hardware.restore_clocks_on_exit or hardware.clockd_socket:
        return None
    if devices.vendor == "simulated":
        return None
    try:
        return start_watchdog(config.hardware.model_copy(update={"vendor": devices.vendor}))
    except Exception as exc:
        log.warning(
            "voltana: the clock-restore watchdog did not start (%s); a killed engine leaves clocks locked",
            _one_line(exc),
        )
        return None


def _default_clock_mhz(devices: DeviceGroup | None, perf_model: PerformanceModel | None) -> int:
    """The clock the GPUs run at before voltana changes anything (0 when unknown); read once at start."""
    try:
        if devices is not None:
            return int(devices.current_clock_mhz())
    except Exception as exc:
        log.debug("voltana: current clock unreadable: %s", exc)
    return perf_model.max_clock_mhz if perf_model is not None else 0


def _open_trace(config: VoltanaConfig) -> Callable[[IterationRecord, RuntimeStatus], None] | None:
    path = getattr(config.engine, "trace_path", None)
    if not path:
        return None

    try:
        return IterationTrace.open(path)
    except OSError as exc:
        log.error("voltana: cannot write the iteration trace %s: %s", path, exc.strerror)
        return None
