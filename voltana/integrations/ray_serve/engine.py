"""The engine inside an emulated Ray Serve replica, with voltana on: one clock decision per iteration.

:class:`VoltanaEngine` is the engine emulator's continuous batching (``voltana.emulator.engine``), each
iteration timed and costed by the simulated GPU (``voltana.hardware.simulated``) at the clock voltana's
:class:`~voltana.core.controller.FrequencyController` picks for it (``policy.clock``, EcoFreq by default),
the controller learning from each finished iteration as in a real engine. It keeps what the replica
publishes (:class:`~voltana.integrations.ray_serve.stats.ReplicaStats`: clock, capture sizes, load, energy so
far) and each request's energy and clock residency, emitted as a ``RequestRecord`` through
``voltana_request_finished`` (the telemetry plugin turns it into the phase's span).

No Ray import: the replica deployment (:mod:`.replica`) drives it on its event loop.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from voltana.core.attribution import attribute_energy
from voltana.core.config import VoltanaConfig
from voltana.core.controller import FrequencyController
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    IterationRecord,
    Phase,
    QueuedRequest,
    RequestRecord,
    ScheduledRequest,
)
from voltana.emulator.engine import EmulatedEngine, EmuRequest, Faults
from voltana.hardware.simulated import IterationCost, PerformanceModel
from voltana.integrations.ray_serve.stats import ReplicaStats
from voltana.plugins.ecofreq.factory import build_controller
from voltana.profiler.ceiling_api import CEILING_LEASE_ID, MemoryCeiling
from voltana.profiler.engine_api import ClockPin

log = logging.getLogger("voltana.ray_serve")


@dataclass(slots=True)
class _Account:
    """One request's share of the replica's energy (J) and its time at each clock (simulated s)."""

    arrival_time_s: float
    energy_j: float = 0.0
    clock_residency_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))


class VoltanaEngine(EmulatedEngine):
    """Continuous batching on the simulated GPU, clock chosen per iteration by voltana (see module doc).

    ``role`` is the replica's P/D role (``prefill`` or ``decode``); a decode replica still prefills locally
    the requests whose KV did not arrive, with the prefill controller. Raises ``ValueError`` (one line) on a
    config that cannot build a controller.
    """

    def __init__(
        self,
        *,
        config: VoltanaConfig,
        role: Phase,
        instance_id: str,
        hook: Any,
        model: PerformanceModel,
        time_scale: float = 1.0,
    ) -> None:
        self.controllers: dict[Phase, FrequencyController] = {
            phase: build_controller(config, phase, instance_id, model, hook) for phase in Phase
        }
        top_mhz = self.controllers[role].allowed_clocks_mhz[-1]
        super().__init__(model, top_mhz, time_scale, Faults(), ceiling=MemoryCeiling())
        self.role = role
        self.instance_id = instance_id
        self.hook = hook
        self.policy = config.policy.clock
        self.energy_j = 0.0
        self._accounts: dict[str, _Account] = {}
        self._pending: tuple[BatchSnapshot, ClockDecision, IterationCost, float] | None = None

    # --- requests ---------------------------------------------------------------------------------------
    def admit(self, req: EmuRequest) -> None:
        """Start accounting for ``req`` and queue it (see ``EmulatedEngine.submit``)."""
        self._accounts[req.request_id] = _Account(time.time())
        self.submit(req)

    def finish(
        self,
        req: EmuRequest,
        *,
        first_token_time_s: float | None,
        trace_headers: dict[str, str] | None = None,
        model: str = "",
    ) -> RequestRecord | None:
        """Close ``req``'s account and emit its ``RequestRecord`` (J, clock residency); never raises."""
        account = self._accounts.pop(req.request_id, None)
        if account is None:
            return None
        record = RequestRecord(
            request_id=req.request_id,
            phase=self.role,
            instance_id=self.instance_id,
            input_tokens=req.prompt_tokens,
            output_tokens=req.generated,
            arrival_time_s=account.arrival_time_s,
            first_token_time_s=first_token_time_s,
            finish_time_s=time.time(),
            energy_j=account.energy_j,
            clock_residency_s=dict(account.clock_residency_s),
            model=model,
            trace_headers=dict(trace_headers or {}),
        )
        try:
            self.hook.voltana_request_finished(record=record)
        except Exception:
            log.exception("voltana_request_finished observer failed")
        return record

    # --- power budget -----------------------------------------------------------------------------------
    def set_clock_ceiling(self, ceiling_mhz: int | None, lease_s: float) -> None:
        """Hold every controller at or below ``ceiling_mhz`` (MHz; None lifts it) for ``lease_s`` seconds:
        a ceiling not renewed within its lease lapses (the clock goes back to the policy)."""
        assert self.ceiling is not None
        lease = (
            None
            if ceiling_mhz is None
            else ClockPin(int(ceiling_mhz), CEILING_LEASE_ID, time.time() + lease_s)
        )
        self.ceiling.set_ceiling(lease)
        self._apply_ceiling()

    def clock_ceiling_mhz(self) -> int | None:
        """The live ceiling (MHz), or None (none set, or its lease lapsed)."""
        return self.ceiling.ceiling_mhz() if self.ceiling is not None else None

    def _apply_ceiling(self) -> None:
        ceiling = self.clock_ceiling_mhz()
        for controller in self.controllers.values():
            controller.set_clock_ceiling(ceiling)

    def pending_prompt_tokens(self) -> int:
        """Prompt tokens queued or in prefill here and not computed yet (the budget's prefill work)."""
        return sum(
            max(0, r.prompt_tokens - r.prefilled) for r in [*self.waiting, *self.running] if r.needs_prefill
        )

    # --- per iteration ----------------------------------------------------------------------------------
    def _snapshot(self, phase: Phase, batch: list[EmuRequest]) -> BatchSnapshot:
        arrival = {rid: a.arrival_time_s for rid, a in self._accounts.items()}
        if phase is Phase.PREFILL:
            scheduled = [
                ScheduledRequest(r.request_id, r.chunk, r.prefilled, arrival.get(r.request_id, 0.0))
                for r in batch
            ]
        else:
            scheduled = [
                ScheduledRequest(
                    r.request_id, 1, r.prompt_tokens + r.generated, arrival.get(r.request_id, 0.0)
                )
                for r in batch
            ]
        waiting = [
            QueuedRequest(r.request_id, r.prompt_tokens - r.prefilled, arrival.get(r.request_id, 0.0))
            for r in self.waiting
        ]
        return BatchSnapshot.build(
            phase,
            scheduled,
            time.monotonic(),
            waiting,
            iteration=self.iterations,
            instance_id=self.instance_id,
        )

    def iteration_latency_s(self, phase: Phase, batch: list[EmuRequest]) -> float:
        """Decide the clock for this iteration, cost it on the simulated GPU; its latency (simulated s)."""
        snapshot = self._snapshot(phase, batch)
        self._apply_ceiling()  # a lapsed lease lifts the ceiling here
        decision = self.controllers[phase].decide(snapshot)
        cost = self.model.cost(
            phase, len(batch), snapshot.num_new_tokens, snapshot.num_context_tokens, decision.clock_mhz
        )
        self.clock_mhz = cost.effective_clock_mhz
        self._pending = (snapshot, decision, cost, snapshot.now_s)
        return cost.latency_s

    def iteration_done(self) -> None:
        """Account the iteration's energy to the replica and its requests; feed the controller."""
        if self._pending is None:
            return
        snapshot, decision, cost, start_s = self._pending
        self._pending = None
        self.energy_j += cost.energy_j
        for request_id, share_j in attribute_energy(snapshot, cost.energy_j).items():
            account = self._accounts.get(request_id)
            if account is not None:
                account.energy_j += share_j
                account.clock_residency_s[cost.effective_clock_mhz] += cost.latency_s
        record = IterationRecord(
            snapshot, decision, cost.effective_clock_mhz, start_s, cost.latency_s, cost.energy_j
        )
        self.controllers[snapshot.phase].observe(record)

    # --- state ------------------------------------------------------------------------------------------
    def loop_error(self) -> BaseException | None:
        """The exception that ended the scheduler loop, or None while it runs (or before it started)."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    def stats(self) -> ReplicaStats:
        """What the replica publishes through ``record_routing_stats`` now."""
        return ReplicaStats(
            instance_id=self.instance_id,
            role=self.role.value,
            policy=self.policy,
            sm_clock_mhz=self.clock_mhz,
            capture_sizes=tuple(self.model.capture_sizes),
            num_running=len(self.running),
            num_waiting=self.num_waiting,
            kv_tokens=self.kv_tokens,
            kv_capacity_tokens=self.model.kv_capacity_tokens,
            iterations=self.iterations,
            energy_j=self.energy_j,
            updated_at_s=time.time(),
            clock_ceiling_mhz=self.clock_ceiling_mhz(),
        )
