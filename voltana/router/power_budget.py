"""The router's side of the cluster power budget (``[cluster] power_budget_w``): run by the router's polling
loop right after a round of polls, every ``budget_period_s`` it describes each admitted instance from what
the poller saw, asks :class:`BudgetCoordinator` for ceilings and pushes each one to its instance
(``POST /voltana/ceiling``, :mod:`voltana.profiler.ceiling_api`).

An instance's demand: the router's latency and energy predictors (EcoPred, seeded from
``engine.predictor_profile`` or the simulated GPU) give its busy power ``E(f) / t(f)`` and iteration time at
each clock for its current batch (prefill: the prompt tokens it has in flight, at most one token budget, a
full budget when it has none; decode: its running batch and KV tokens); its work is the prefill tokens in
flight at ``t(f)`` per budget, or (decode) a period of iterations at its current clock; its pressure the
requests running and waiting there. Its work is at least the busy share its measured power implies (load the
router did not send). Clock steps the leftover budget buys are charged at busy power (prefill: a full token
budget, decode: its running batch), as if a burst kept the instance busy the whole period
(:mod:`voltana.core.power_budget`). Measured power (the change of the ``energy_joules`` its state reports,
per second) corrects the prediction. ``GET /voltana/budget`` on the router shows the last allocation.

:class:`BudgetPlanner` is that rule without transport (observations in, allocation out); :class:`RouterBudget`
feeds it from the poller and pushes, the Ray integration's ``Budget`` deployment
(``voltana.integrations.ray_serve.budget``) feeds it from the replicas' reports.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from voltana.core.config import ClusterConfig, ConfigError, VoltanaConfig
from voltana.core.power_budget import BudgetAllocation, BudgetCoordinator, BudgetDemand, average_power_w
from voltana.core.types import (
    DEFAULT_PREFILL_TOKEN_BUDGET,
    BatchSnapshot,
    InstanceState,
    Phase,
    ScheduledRequest,
)
from voltana.profiler.ceiling_api import CEILING_PATH
from voltana.router.instances import Instance, InstanceRegistry
from voltana.router.predictors import RoutePredictors, route_predictors

log = logging.getLogger("voltana.router")

PEAK_DECODE_BATCH = 256
"""Heaviest decode batch assumed for the fair-share floor when the engine does not report its cap (vLLM's
``max_num_seqs`` default)."""
PEAK_DECODE_CONTEXT = 1024
"""KV tokens per request of that heaviest decode batch (a ShareGPT-like prompt plus half its output)."""
LEASE_PERIODS = 3
"""A pushed ceiling lapses after this many periods without a renewal."""


def budget_predictors(config: VoltanaConfig) -> RoutePredictors:
    """The predictors a budget needs (power at each clock). Raises :class:`ConfigError` (one line) when the
    config seeds none (no ``engine.predictor_profile``, not the simulated GPU)."""
    predictors = route_predictors(config)
    if predictors is None:
        raise ConfigError(
            f"cluster.power_budget_w = {config.cluster.power_budget_w:g} needs predicted power per clock: "
            'set engine.predictor_profile (a `voltana profile` file) or hardware.vendor = "simulated"'
        )
    return predictors


def _snapshot(phase: Phase, batch: int, new_tokens: int, context_tokens: int) -> BatchSnapshot:
    per_new, per_context = new_tokens // batch, context_tokens // batch
    requests = tuple(ScheduledRequest(f"budget-{i}", per_new, per_context, 0.0) for i in range(batch))
    return BatchSnapshot(phase, requests, (), 0.0, per_new * batch, per_context * batch)


@dataclass(frozen=True, slots=True)
class BudgetObservation:
    """What one budget period knows of an instance: its state as routing sees it (``view``: phase, load,
    clock, pending prompt tokens) and the GPU energy it last reported (``energy_j``, J since it started, None:
    no meter) with the time of that report (``energy_at_s``, s, any clock that only moves forward)."""

    view: InstanceState
    energy_j: float | None = None
    energy_at_s: float = 0.0


class BudgetPlanner:
    """Demands from observed instances, one :class:`BudgetCoordinator` allocation per period (see the module
    docstring); no I/O. ``voltana router`` (:class:`RouterBudget`) and the Ray integration's budget
    deployment (``voltana.integrations.ray_serve.budget``) step it, each with its own transport.

    Raises ValueError when ``cluster.power_budget_w`` is not set.
    """

    def __init__(self, predictors: RoutePredictors, cluster: ClusterConfig) -> None:
        if cluster.power_budget_w is None:
            raise ValueError("cluster.power_budget_w is not set")
        self.predictors = predictors
        self.period_s = cluster.budget_period_s
        self.burst_utilization = cluster.burst_utilization
        self.coordinator = BudgetCoordinator(cluster.power_budget_w, margin=cluster.budget_margin)
        self.last: BudgetAllocation | None = None
        self.periods = 0
        self.infeasible_periods = 0
        self.measured_w: dict[str, float] = {}
        self._energy: dict[str, tuple[float, float]] = {}
        self._floors: dict[Phase, int] = {}
        self._busy_last: dict[str, bool] = {}

    @property
    def lease_s(self) -> float:
        """How long a ceiling holds without a renewal (s): :data:`LEASE_PERIODS` periods, at most 60 s."""
        return min(60.0, LEASE_PERIODS * self.period_s)

    def plan(self, observations: Sequence[BudgetObservation]) -> BudgetAllocation:
        """One period: fold the measured power in, build every instance's demand, allocate."""
        demands = []
        for seen in observations:
            self._measure(seen)
            demands.append(self._demand(seen.view, len(observations)))
        allocation = self.coordinator.allocate(demands)
        self.last = allocation
        self.periods += 1
        if not allocation.feasible:
            self.infeasible_periods += 1
        return allocation

    def _measure(self, seen: BudgetObservation) -> None:
        """Fold the instance's measured power since the last period into the coordinator's correction."""
        instance_id = seen.view.instance_id
        if seen.energy_j is None:
            return
        previous = self._energy.get(instance_id)
        self._energy[instance_id] = (seen.energy_j, seen.energy_at_s)
        if previous is None or seen.energy_at_s <= previous[1]:
            return
        measured_w = (seen.energy_j - previous[0]) / (seen.energy_at_s - previous[1])
        self.measured_w[instance_id] = measured_w
        # Only a period with work says how wrong the busy-power prediction is: an idle instance draws its
        # idle power whatever the burst headroom assumed, and learning from it would spend the headroom.
        if (
            self._busy_last.get(instance_id)
            and self.last is not None
            and instance_id in self.last.predicted_by_instance_w
        ):
            predicted_w = self.last.predicted_by_instance_w[instance_id]
            predicted_w /= self.coordinator.correction(instance_id)  # compare the raw prediction
            self.coordinator.observe_power(instance_id, predicted_w, measured_w)

    def _busy(self, phase: Phase, batch: int, new: int, context: int) -> tuple[list[float], list[float]]:
        """(busy power W, iteration time s) at every clock for one batch shape (EcoPred)."""
        snapshot = _snapshot(phase, batch, new, context)
        latency = self.predictors.by_phase[phase]
        energy = self.predictors.energy_by_phase[phase]
        times = [max(1e-6, latency.predict_latency_s(snapshot, f)) for f in self.predictors.clocks_mhz]
        joules = [energy.predict_energy_j(snapshot, f) for f in self.predictors.clocks_mhz]
        return [j / t for j, t in zip(joules, times, strict=True)], times

    def _demand(self, view: InstanceState, count: int) -> BudgetDemand:
        clocks = self.predictors.clocks_mhz
        idle_w = self.predictors.idle_power_w
        pressure = float(view.num_running + view.num_waiting)
        self._busy_last[view.instance_id] = pressure > 0
        current = clocks.index(view.sm_clock_mhz) if view.sm_clock_mhz in clocks else len(clocks) - 1
        if view.phase == Phase.PREFILL:
            pending = view.pending_prompt_tokens
            tokens = (
                min(DEFAULT_PREFILL_TOKEN_BUDGET, pending) if pending > 0 else DEFAULT_PREFILL_TOKEN_BUDGET
            )
            power, times = self._busy(Phase.PREFILL, 1, tokens, 0)
            work = [pending / tokens * t for t in times]
            # A burst within the period runs full token budgets: that is what a clock step is charged at.
            full, _ = self._busy(Phase.PREFILL, 1, DEFAULT_PREFILL_TOKEN_BUDGET, 0)
            burst = tuple(max(b, f) for b, f in zip(power, full, strict=True))
        else:
            batch = max(1, view.num_running)
            context = view.kv_tokens if view.kv_tokens > 0 else batch * PEAK_DECODE_CONTEXT
            power, times = self._busy(Phase.DECODE, batch, batch, context)
            busy = view.num_running > 0
            work = [self.period_s * t / times[current] if busy else 0.0 for t in times]
            burst = tuple(power)
        # The busy share its measured power implies at its current clock covers load the router did not
        # send (or cannot see in the queue): the work is at least that share of a period.
        measured_w = self.measured_w.get(view.instance_id)
        dynamic_w = power[current] - idle_w
        if measured_w is not None and dynamic_w > 0.0:
            share = min(1.0, max(0.0, (measured_w - idle_w) / dynamic_w))
            work = [
                max(w, share * self.period_s * t / times[current]) for w, t in zip(work, times, strict=True)
            ]
        return BudgetDemand(
            view.instance_id,
            clocks,
            average_power_w(idle_w, power, work, self.period_s, self.burst_utilization),
            tuple(work),
            pressure=pressure,
            floor_clock_mhz=self.fair_share_floor_mhz(view.phase, count),
            busy_power_w=burst,
        )

    def fair_share_floor_mhz(self, phase: Phase, count: int) -> int:
        """The clock a static cap of budget/N allows this phase's heaviest iteration (MHz)."""
        floor = self._floors.get(phase)
        if floor is None:
            share_w = self.coordinator.budget_w / max(1, count)
            if phase == Phase.PREFILL:
                power, _ = self._busy(phase, 1, DEFAULT_PREFILL_TOKEN_BUDGET, 0)
            else:
                batch = PEAK_DECODE_BATCH
                power, _ = self._busy(phase, batch, batch, batch * PEAK_DECODE_CONTEXT)
            fitting = [f for f, p in zip(self.predictors.clocks_mhz, power, strict=True) if p <= share_w]
            floor = self._floors[phase] = fitting[-1] if fitting else self.predictors.clocks_mhz[0]
        return floor

    def status(self) -> dict[str, Any]:
        """The budget, the last allocation and the measured power per instance (JSON-ready)."""
        last = self.last
        return {
            "budget_w": self.coordinator.budget_w,
            "period_s": self.period_s,
            "periods": self.periods,
            "infeasible_periods": self.infeasible_periods,
            "feasible": None if last is None else last.feasible,
            "predicted_power_w": None if last is None else last.predicted_power_w,
            "committed_power_w": None if last is None else last.committed_power_w,
            "predicted_by_instance_w": {} if last is None else dict(last.predicted_by_instance_w),
            "ceilings_mhz": {} if last is None else last.ceilings_mhz,
            "unmet_needs": [] if last is None else list(last.unmet_needs),
            "measured_power_w": dict(self.measured_w),
            "measured_total_w": sum(self.measured_w.values()) if self.measured_w else None,
        }


class RouterBudget(BudgetPlanner):
    """The coordinator of ``voltana router``, stepped by its poller (see the module docstring)."""

    def __init__(
        self,
        registry: InstanceRegistry,
        client: aiohttp.ClientSession,
        predictors: RoutePredictors,
        cluster: ClusterConfig,
        token: str | None,
    ) -> None:
        super().__init__(predictors, cluster)
        self.registry = registry
        self.client = client
        self.token = token
        self.push_failures = 0
        self._next_s = 0.0

    async def after_poll(self) -> None:
        """The poller's hook: one :meth:`step` once ``budget_period_s`` has passed since the last; never
        raises (the budget must never take the router's polling down)."""
        now_s = time.monotonic()
        if now_s < self._next_s:
            return
        self._next_s = now_s + self.period_s
        try:
            await self.step()
        except Exception:
            log.exception("power budget step failed")

    async def step(self) -> BudgetAllocation:
        """One period: measure, allocate, push."""
        instances = [inst for inst in self.registry if inst.admitted]
        now_s = time.monotonic()
        stale_after_s = self.registry.stale_after_s
        allocation = self.plan(
            [
                BudgetObservation(inst.view(now_s, stale_after_s), inst.energy_j, inst.energy_at_s)
                for inst in instances
            ]
        )
        await asyncio.gather(
            *(self._push(inst, allocation.ceilings_mhz[inst.instance_id]) for inst in instances)
        )
        return allocation

    async def _push(self, inst: Instance, ceiling_mhz: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = {"ceiling_mhz": ceiling_mhz, "lease_s": self.lease_s}
        try:
            async with self.client.post(inst.url + CEILING_PATH, json=body, headers=headers) as response:
                if response.status != 200:
                    text = await response.text()
                    self._push_failed(inst, f"HTTP {response.status}: {text[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._push_failed(inst, f"{type(exc).__name__}: {exc}")

    def _push_failed(self, inst: Instance, why: str) -> None:
        self.push_failures += 1
        if self.push_failures == 1 or math.log2(self.push_failures).is_integer():
            log.warning("power budget: cannot push the ceiling to %s (%s)", inst.instance_id, why)

    def status(self) -> dict[str, Any]:
        """``GET /voltana/budget``: the planner's status and the pushes that failed."""
        return {**super().status(), "push_failures": self.push_failures}
