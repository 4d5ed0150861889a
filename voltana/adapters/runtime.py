"""The engine-neutral per-instance runtime both engine adapters (vLLM, SGLang) drive once per iteration.

It owns the instance's GPU group, clock applier, energy meter and frequency controller(s). The adapter calls
:meth:`InstanceRuntime.before_iteration` right before the forward and :meth:`InstanceRuntime.after_iteration`
when that iteration's output is back, in the same order (a pipelining engine may call ``before`` twice before
the first ``after``). Invariants: no method raises into the engine; any failure degrades the runtime to
monitor-only (latency still measured, clocks never touched) with exactly one loud log line.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voltana.core.attribution import energy_shares
from voltana.core.config import VoltanaConfig
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    IterationRecord,
    Phase,
    RequestRecord,
)

log = logging.getLogger("voltana.runtime")

MONITOR_ONLY_POLICY = "monitor-only"


_ClockTotals = dict[int, tuple[float, int]]
"""Per clock (MHz): (seconds, iterations) run at it since the runtime started, summed over iterations."""


@dataclass(slots=True)
class _RequestAccount:
    """Energy and clock residency accumulated for one request while it runs on this instance.

    Residency is settled per segment (a run of consecutive iterations the request is in): ``segment_start``
    holds the instance's clock totals when the open segment began (None when none is open), and the
    segment's residency is the difference of the totals when it closes, added to ``clock_residency_s``.
    """

    arrival_time_s: float
    energy_j: float = 0.0
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

    @property
    def hook_time_per_iteration_s(self) -> float:
        """Mean time voltana spent in before+after per iteration (s)."""
        return self.hook_time_s / self.iterations if self.iterations else 0.0


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
        hook: Any,
        controllers: Mapping[Phase, Any] | None = None,
        devices: Any | None = None,
        applier: Any | None = None,
        meter: Any | None = None,
        perf_model: Any | None = None,
        monitor_only_reason: str = "",
        model_name: str = "",
        trace: Callable[[IterationRecord, RuntimeStatus], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.instance_id = instance_id
        self.phase = phase
        self.model_name = model_name
        self._hook = hook
        self._controllers = dict(controllers or {})
        self._devices = devices
        self._applier = applier
        self._meter = meter
        self._perf_model = perf_model
        self._trace = trace
        self._clock = clock
        self._monitor_only_reason = monitor_only_reason
        self._pending: deque[_Pending] = deque()
        self._accounts: dict[str, _RequestAccount] = {}
        self._running: set[str] = set()  # requests of the last closed iteration: their segments are open
        self._clock_totals: _ClockTotals = {}
        self._last_end_s = 0.0
        self._iterations = 0
        self._hook_time_s = 0.0
        self._window: Any | None = None
        self._failure_logged = False
        first = next(iter(self._controllers.values()), None)
        self._policy = str(first.ctx.policy) if first is not None else ""
        if monitor_only_reason or not self._controllers:
            self._monitor_only_reason = monitor_only_reason or "no frequency controller"
        self._default_clock_mhz = _default_clock_mhz(devices, perf_model)
        self._pinned_mhz: int | None = None  # a client's pin (profiling) overrides the policy
        self._iteration_observers: list[Callable[[IterationRecord], None]] = []

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def start(
        cls,
        config: VoltanaConfig,
        phase: Phase | None,
        instance_id: str,
        *,
        model_name: str = "",
        hook: Any | None = None,
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
            return cls._monitor_only(f"GPU control unavailable: {_one_line(exc)}", **common)
        perf_model = _performance_model(config, devices)
        meter = _try_meter(devices)
        try:
            controllers = {
                p: _build_controller(config, p, instance_id, perf_model, hook, devices)
                for p in ((phase,) if phase else (Phase.PREFILL, Phase.DECODE))
            }
        except Exception as exc:
            reason = f"no frequency controller: {_one_line(exc)}"
            return cls._monitor_only(reason, devices=devices, meter=meter, perf_model=perf_model, **common)
        runtime = cls(controllers=controllers, devices=devices, meter=meter, perf_model=perf_model, **common)
        try:
            from voltana.hardware.applier import ClockApplier

            runtime._applier = ClockApplier(
                devices,
                restore_on_exit=config.hardware.restore_clocks_on_exit,
                on_monitor_only=runtime._applier_gave_up,
                name=f"voltana-clock-{instance_id}",
            )
        except Exception as exc:
            runtime._degrade(f"clock applier could not start: {_one_line(exc)}")
            return runtime
        log.info(
            "voltana (%s, %s): clock control active on %s, policy %s",
            instance_id,
            runtime.role,
            getattr(devices, "vendor", "?"),
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
            if self._meter is not None and not self._pending:
                self._window = self._meter.begin()
        except Exception as exc:
            self._fail(f"iteration hook failed: {_one_line(exc)}")
            decision = self._monitor_decision()
        t1 = self._clock()
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
            latency_s = max(0.0, t_end - max(pending.dispatch_s, self._last_end_s))
            self._last_end_s = t_end
            applied = self._applied_clock_mhz(pending.decision)
            record = IterationRecord(
                snapshot=pending.snapshot,
                decision=pending.decision,
                applied_clock_mhz=applied,
                start_time_s=pending.wall_start_s,
                latency_s=latency_s,
                energy_j=self._iteration_energy_j(pending.snapshot, applied),
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
            energy_j=account.energy_j,
            clock_residency_s=account.clock_residency_s,  # the account is gone: hand its dict over
            model=self.model_name,
            trace_headers=dict(trace_headers) if trace_headers else {},
        )
        try:
            self._hook.voltana_request_finished(record=record)
        except Exception as exc:
            log.warning("voltana: a voltana_request_finished plugin failed: %s", _one_line(exc))
        return record

    def forget_request(self, request_id: str) -> None:
        """Drop a request's accounting without reporting it (it was already reported, or was aborted)."""
        self._accounts.pop(request_id, None)
        self._running.discard(request_id)

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

    def add_iteration_observer(self, observer: Callable[[IterationRecord], None]) -> None:
        """Call ``observer(record)`` after every iteration (hot path: it must be cheap and not raise)."""
        self._iteration_observers.append(observer)

    @property
    def measures_energy(self) -> bool:
        """True when iterations are metered: a request's ``energy_j`` is then measured (else 0.0: unknown)."""
        return self._meter is not None

    def status(self) -> RuntimeStatus:
        """A consistent view of this runtime (cheap: no driver call)."""
        return RuntimeStatus(
            instance_id=self.instance_id,
            role=self.role,
            monitor_only=self.monitor_only,
            monitor_only_reason=self._monitor_only_reason,
            sm_clock_mhz=self._applied_clock_mhz(None) or None,
            policy=MONITOR_ONLY_POLICY if self.monitor_only else self._policy,
            iterations=self._iterations,
            hook_time_s=self._hook_time_s,
        )

    def close(self) -> None:
        """Restore clocks (the applier does) and release the devices; idempotent, never raises."""
        applier, self._applier = self._applier, None
        devices, self._devices = self._devices, None
        for closer in (applier, devices, self._trace):
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
        decision: ClockDecision = controller.decide(snapshot)
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
        itl_decision: ClockDecision = self._controllers[Phase.DECODE].decide(sub)
        return itl_decision if itl_decision.clock_mhz > decision.clock_mhz else decision

    def _monitor_decision(self) -> ClockDecision:
        return ClockDecision(self._applied_clock_mhz(None), DecisionReason.MONITOR_ONLY, MONITOR_ONLY_POLICY)

    def _applied_clock_mhz(self, decision: ClockDecision | None) -> int:
        """The clock the GPUs run at: read back by the applier, else the decision, else the default clock."""
        applier = self._applier
        if applier is not None and applier.applied_clock_mhz:
            return int(applier.applied_clock_mhz)
        if decision is not None and decision.clock_mhz and not self._monitor_only_reason:
            return decision.clock_mhz
        return self._default_clock_mhz

    def _iteration_energy_j(self, snapshot: BatchSnapshot, clock_mhz: int) -> float | None:
        if self._devices is None or self._meter is None:
            return None
        if self._perf_model is not None and getattr(self._devices, "vendor", "") == "simulated":
            from voltana.hardware.simulated import record_iteration

            cost = self._perf_model.cost(
                snapshot.phase,
                snapshot.batch_size,
                snapshot.num_new_tokens,
                snapshot.num_context_tokens,
                clock_mhz,
            )
            record_iteration(self._devices, cost)
        window = self._window
        energy_j = float(self._meter.end(window)) if window is not None else None
        self._window = self._meter.begin() if self._pending else None  # pipelined: next window starts now
        return energy_j

    def _account(self, record: IterationRecord, first_token_request_ids: Iterable[str]) -> None:
        """Add this iteration's energy share to each request, and its time at its clock to the instance.

        O(batch size) with a small constant: shares come from :func:`energy_shares` (vectorised for large
        batches); clock residency is summed once per iteration into the instance's clock totals, and a
        request's residency is settled when its run of consecutive iterations ends (set differences).
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
        if record.energy_j is not None and request_ids:
            for request_id, share_j in zip(
                request_ids, energy_shares(snapshot.requests, record.energy_j), strict=True
            ):
                accounts[request_id].energy_j += share_j
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


class _NullHook:
    """Stands in for the plugin hooks when the plugin manager itself cannot be built."""

    def voltana_iteration_finished(self, record: IterationRecord) -> None:
        return None

    def voltana_request_finished(self, record: RequestRecord) -> None:
        return None


def _start_telemetry(config: VoltanaConfig) -> None:
    """Start this process's telemetry from ``[telemetry]``; a failure costs one warning, never serving."""
    try:
        from voltana.plugins.telemetry import configure_telemetry

        configure_telemetry(config)
    except Exception as exc:
        log.warning("voltana: telemetry is off: %s", _one_line(exc))


def _plugin_hook_or_null() -> Any:
    try:
        from voltana.plugins import get_plugin_manager

        return get_plugin_manager().hook
    except Exception as exc:
        log.error(
            "voltana: plugins could not be loaded (%s); iteration and request hooks are off", _one_line(exc)
        )
        return _NullHook()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _performance_model(config: VoltanaConfig, devices: Any) -> Any | None:
    """The physics model: the simulated group's own, else the configured profile (seeds the predictor)."""
    model = (
        getattr(devices.devices[0], "model", None) if getattr(devices, "vendor", "") == "simulated" else None
    )
    if model is not None:
        return model
    try:
        from voltana.hardware.simulated import performance_model

        return performance_model(config.hardware.simulated_gpu, config.hardware.simulated_model)
    except Exception as exc:
        log.warning("voltana: no performance model for seeding (%s)", _one_line(exc))
        return None


def _open_devices(config: VoltanaConfig, hook: Any) -> Any:
    from voltana.hardware.select import open_devices

    return open_devices(config.hardware, hook if hasattr(hook, "voltana_register_hardware") else None)


def _build_controller(
    config: VoltanaConfig, phase: Phase, instance_id: str, model: Any, hook: Any, devices: Any
) -> Any:
    from voltana.plugins.ecofreq_seed import build_controller

    return build_controller(config, phase, instance_id, model, hook, devices.supported_clocks_mhz())


def _try_meter(devices: Any) -> Any | None:
    try:
        from voltana.hardware.energy import EnergyMeter

        return EnergyMeter(devices)
    except Exception as exc:
        log.warning("voltana: no energy meter (%s); energy is not measured", _one_line(exc))
        return None


def _default_clock_mhz(devices: Any | None, perf_model: Any | None) -> int:
    """The clock the GPUs run at before voltana changes anything (0 when unknown); read once at start."""
    try:
        if devices is not None:
            return int(devices.current_clock_mhz())
    except Exception as exc:
        log.debug("voltana: current clock unreadable: %s", exc)
    return int(getattr(perf_model, "max_clock_mhz", 0) or 0)


def _open_trace(config: VoltanaConfig) -> Callable[[IterationRecord, RuntimeStatus], None] | None:
    path = getattr(config.engine, "trace_path", None)
    if not path:
        return None
    from voltana.adapters.iteration_trace import IterationTrace

    try:
        return IterationTrace.open(path)
    except OSError as exc:
        log.error("voltana: cannot write the iteration trace %s: %s", path, exc.strerror)
        return None
