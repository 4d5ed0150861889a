"""A cluster power budget in the simulator: the coordinator against static per-GPU caps and static clocks.

Every instance's controller is wrapped in a :class:`MeteredController`, which meters each iteration (start,
duration, energy, clock: the simulated GPU is the meter) and, depending on the policy under test, either
applies a static power cap or takes ceilings from a :class:`BudgetDriver` (the simulator's side of
:class:`voltana.core.power_budget.BudgetCoordinator`). The policies compared at one budget, on the same
requests:

- ``ecofreq+coordinator``: EcoFreq within the coordinator's ceilings (recomputed every ``budget_period_s``);
- ``ecofreq+caps`` and ``static-max+caps``: every GPU capped at ``budget / N`` (``nvidia-smi -pl``): the
  simulated GPU's firmware runs each iteration at the highest supported clock at or below the policy's whose
  power per GPU fits the limit (``PerformanceModel.cost(..., power_cap_w=)``, per GPU:
  :func:`gpu_power_limit_w`);
- ``static-clock``: every instance pinned at the highest clock whose peak power (:func:`peak_power_w`) fits
  the budget for the whole cluster.

The cluster's power is reported in 1 s windows (:func:`power_windows_w`), with the share of windows above
the budget.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voltana.core.arrivals import ArrivalRate
from voltana.core.controller import WANTED_CLOCK_KEY
from voltana.core.power_budget import (
    BudgetAllocation,
    BudgetCoordinator,
    BudgetDemand,
    average_power_w,
    static_power_caps_w,
)
from voltana.core.protocols import Controller
from voltana.core.types import BatchSnapshot, ClockDecision, IterationRecord, Phase
from voltana.sim.cluster import ClusterSpec
from voltana.sim.metrics import PolicyResult
from voltana.sim.runner import SimulationSetup, parse_policy, run_policy, static_spec
from voltana.sim.workload import Workload

COORDINATOR = "ecofreq+coordinator"
ECOFREQ_CAPS = "ecofreq+caps"
STATIC_MAX_CAPS = "static-max+caps"
STATIC_CLOCK = "static-clock"
BUDGET_POLICIES: tuple[str, ...] = (COORDINATOR, ECOFREQ_CAPS, STATIC_MAX_CAPS, STATIC_CLOCK)
WINDOW_S = 1.0
"""Power is judged in 1 s windows: NVML's power reading averages 1 s on Ampere and later."""
_ARRIVAL_WINDOW_S = 2.0
"""Time constant of the prefill arrival-rate estimate the pressure uses (EcoFreq's default)."""


def gpu_power_limit_w(model: Any, instance_cap_w: float) -> float:
    """The per-GPU power limit an operator sets to hold one instance at ``instance_cap_w`` (W).

    An instance spans ``model.tp`` GPUs, and a power limit is per GPU (``nvidia-smi -pl``, NVML
    ``nvmlDeviceSetPowerManagementLimit``), so the share is ``instance_cap_w / tp``, clamped to what the
    driver accepts: at most TDP, at least ``gpu.min_power_limit_w`` (a driver refuses lower limits, so a
    budget below ``N * tp * min_power_limit_w`` is not met by static caps; the power windows show it).
    """
    gpu = model.gpu
    return float(min(gpu.tdp_w, max(gpu.min_power_limit_w, instance_cap_w / model.tp)))


def _peak_batch(cluster: ClusterSpec, phase: Phase, context_tokens: int) -> tuple[int, int, int]:
    """(batch size, new tokens, context tokens) of an instance's heaviest iteration."""
    if phase == Phase.PREFILL:
        return 1, cluster.prefill_token_budget, 0
    batch = cluster.limits().max_running
    return batch, batch, batch * context_tokens


def peak_power_w(cluster: ClusterSpec, phase: Phase, clock_mhz: int, context_tokens: int) -> float:
    """Power of one instance's heaviest iteration at ``clock_mhz`` (W): a full prefill token budget, or the
    engine's running-request cap of decodes with ``context_tokens`` each."""
    batch, new, context = _peak_batch(cluster, phase, context_tokens)
    return float(cluster.model.cost(phase, batch, new, context, clock_mhz).avg_power_w)


def cluster_peak_power_w(cluster: ClusterSpec, clock_mhz: int, context_tokens: int) -> float:
    """Every instance at its heaviest iteration at ``clock_mhz`` (W): the budget's reference ("100%")."""
    return cluster.num_prefill * peak_power_w(
        cluster, Phase.PREFILL, clock_mhz, context_tokens
    ) + cluster.num_decode * peak_power_w(cluster, Phase.DECODE, clock_mhz, context_tokens)


def mean_decode_context(workload: Workload) -> int:
    """Mean KV tokens of a decoding request over its life: prompt + half the output (tokens)."""
    if len(workload) == 0:
        return 0
    return int(np.mean(workload.input_tokens) + 0.5 * np.mean(workload.output_tokens))


@dataclass
class _Meter:
    """One instance's iterations: start (s), duration (s), energy (J), clock (MHz), in start order."""

    start_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    energy_j: list[float] = field(default_factory=list)
    clock_mhz: list[int] = field(default_factory=list)
    first_open: int = 0
    """Index of the first iteration that may still overlap the next measured period."""


class MeteredController:
    """A controller with a meter, and either a static power cap or the coordinator's ceilings around it.

    Everything else (``predictor``, ``power_model``, ``allowed_clocks_mhz``, ``ctx``) is the wrapped
    controller's, so routers see the instance's own models.
    """

    def __init__(
        self,
        inner: Any,
        phase: Phase,
        instance_id: str,
        model: Any,
        *,
        power_limit_w: float | None = None,
        driver: BudgetDriver | None = None,
    ) -> None:
        self.inner = inner
        self.phase = phase
        self.instance_id = instance_id
        self.model = model
        self.power_limit_w = power_limit_w
        """Per-GPU power limit (W) the simulated GPU runs under; None: TDP."""
        self.driver = driver
        self.clocks_mhz: tuple[int, ...] = tuple(inner.allowed_clocks_mhz)
        self.meter = _Meter()
        self.last_snapshot: BatchSnapshot | None = None
        self.period_need_mhz: int | None = None
        self.arrivals = ArrivalRate(_ARRIVAL_WINDOW_S)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decide(self, snapshot: BatchSnapshot) -> ClockDecision:
        """The wrapped controller's decision, ticked through the budget and lowered by a power cap."""
        if self.driver is not None:
            self.driver.tick(snapshot.now_s)
        decision: ClockDecision = self.inner.decide(snapshot)
        wanted = int(self.inner.ctx.state.get(WANTED_CLOCK_KEY, decision.clock_mhz))
        self.period_need_mhz = max(self.period_need_mhz or 0, wanted)
        self.last_snapshot = snapshot
        if self.phase == Phase.PREFILL:
            self.arrivals.update(snapshot)
        args = (snapshot.phase, snapshot.batch_size, snapshot.num_new_tokens, snapshot.num_context_tokens)
        # What the simulated GPU will measure for this iteration. Under a power limit its firmware may run any
        # supported clock (not only the policy's grid): the cost's effective clock is the one the engine runs.
        cost = self.model.cost(*args, decision.clock_mhz, power_cap_w=self.power_limit_w)
        if self.power_limit_w is not None and cost.effective_clock_mhz != decision.clock_mhz:
            decision = ClockDecision(int(cost.effective_clock_mhz), decision.reason, decision.policy)
        clock = decision.clock_mhz
        meter = self.meter
        meter.start_s.append(snapshot.now_s)
        meter.latency_s.append(float(cost.latency_s))
        meter.energy_j.append(float(cost.energy_j))
        meter.clock_mhz.append(clock)
        return decision

    def observe(self, record: IterationRecord) -> None:
        """Passed to the wrapped controller."""
        self.inner.observe(record)

    def busy_in(self, start_s: float, end_s: float) -> list[tuple[float, float, int]]:
        """(busy s, energy J, clock MHz) of each iteration overlapping ``[start_s, end_s)``, prorated."""
        meter = self.meter
        out: list[tuple[float, float, int]] = []
        index = meter.first_open
        n = len(meter.start_s)
        while index < n and meter.start_s[index] + meter.latency_s[index] <= start_s:
            index += 1
        meter.first_open = index
        while index < n and meter.start_s[index] < end_s:
            begin, duration = meter.start_s[index], meter.latency_s[index]
            overlap = min(end_s, begin + duration) - max(start_s, begin)
            if overlap > 0.0 and duration > 0.0:
                out.append((overlap, meter.energy_j[index] * overlap / duration, meter.clock_mhz[index]))
            index += 1
        return out


class BudgetDriver:
    """The simulator's side of the coordinator: every ``period_s`` (ticked by the instances' decisions) it
    measures each instance's power over the period that ended, builds each instance's demand and sets the
    ceilings of the new allocation.

    An instance's demand: its last batch (a full prefill token budget / one decode before its first) at each
    allowed clock gives busy power ``Pb(f)`` and iteration time ``t(f)``; its work for the next period is the
    busy time it measured in the last one scaled by ``t(f) / t(f_last)`` plus, for prefill, the waiting
    prompt tokens at ``t(f)`` per batch; its predicted power is ``idle + u(f) (Pb(f) - idle)`` with ``u(f)``
    that work over the period, at least ``burst_utilization`` and at most 1 (prefill work is at least what
    the measured prompt-token arrival rate brings in a period). Its pressure counts the
    requests in its batch and queue plus (prefill) the requests the measured arrival rate brings in a period;
    its need is the highest clock its policy asked for in the last period. Its busy power for the
    coordinator's leftover steps is what a burst draws: full prefill token budgets (prefill), its current
    batch (decode). An iteration still running when the period starts keeps its clock until it ends (a
    prefill iteration of a full token budget runs ~0.3 s), so its remaining share of the period is predicted
    at the power it draws, whatever the new ceiling.
    """

    def __init__(
        self,
        coordinator: BudgetCoordinator,
        cluster: ClusterSpec,
        *,
        period_s: float,
        burst_utilization: float,
        context_tokens: int,
    ) -> None:
        if not period_s > 0.0:
            raise ValueError(f"budget period must be positive, got {period_s}")
        self.coordinator = coordinator
        self.cluster = cluster
        self.model = cluster.model
        self.idle_w = float(cluster.model.idle_power_w())
        self.period_s = float(period_s)
        self.burst_utilization = float(burst_utilization)
        self.context_tokens = context_tokens
        self.instances: list[MeteredController] = []
        self.next_s: float | None = None
        self.last_s = 0.0
        self.allocations: list[tuple[float, BudgetAllocation]] = []
        self._busy_power: dict[str, tuple[float, ...]] = {}
        self._floors: dict[Phase, int] = {}
        self._full_prefill_w: tuple[float, ...] | None = None

    def tick(self, now_s: float) -> None:
        """Allocate when a period has passed (the first call allocates at once)."""
        if self.next_s is not None and now_s < self.next_s:
            return
        self._allocate(now_s)
        self.next_s = now_s + self.period_s

    def _allocate(self, now_s: float) -> None:
        start_s = self.last_s
        span_s = now_s - start_s
        demands: list[BudgetDemand] = []
        for inst in self.instances:
            busy = inst.busy_in(start_s, now_s) if span_s > 0.0 else []
            busy_s = sum(b for b, _, _ in busy)
            previous = self._busy_power.get(inst.instance_id)
            if span_s > 0.0 and previous is not None:
                clocks = inst.clocks_mhz
                predicted_j = sum(
                    b * previous[min(len(clocks) - 1, bisect_right(clocks, c) - 1)] for b, _, c in busy
                )
                predicted_j += self.idle_w * max(0.0, span_s - busy_s)
                measured_j = sum(e for _, e, _ in busy) + self.idle_w * max(0.0, span_s - busy_s)
                self.coordinator.observe_power(inst.instance_id, predicted_j / span_s, measured_j / span_s)
            demands.append(self._demand(inst, now_s, busy_s, busy[-1][2] if busy else None))
            inst.period_need_mhz = None
        allocation = self.coordinator.allocate(demands)
        for inst in self.instances:
            inst.inner.set_clock_ceiling(allocation.ceilings_mhz[inst.instance_id])
        self.allocations.append((now_s, allocation))
        self.last_s = now_s

    def _demand(
        self, inst: MeteredController, now_s: float, busy_s: float, last_clock_mhz: int | None
    ) -> BudgetDemand:
        snapshot = inst.last_snapshot
        meter = inst.meter
        running = bool(meter.start_s) and meter.start_s[-1] + meter.latency_s[-1] > now_s
        if snapshot is None or snapshot.batch_size == 0:
            batch, new, context = (
                _peak_batch(self.cluster, inst.phase, self.context_tokens)
                if inst.phase == Phase.PREFILL
                else (1, 1, self.context_tokens)
            )
            waiting: tuple[Any, ...] = ()
        else:
            batch, new, context = snapshot.batch_size, snapshot.num_new_tokens, snapshot.num_context_tokens
            waiting = snapshot.waiting
        clocks = inst.clocks_mhz
        costs = [self.model.cost(inst.phase, batch, new, context, f) for f in clocks]
        busy_power = tuple(float(c.avg_power_w) for c in costs)
        self._busy_power[inst.instance_id] = busy_power
        latency = [float(c.latency_s) for c in costs]
        ref = clocks.index(last_clock_mhz) if last_clock_mhz in clocks else len(clocks) - 1
        pressure = float(batch if running else 0) + len(waiting)
        iterations = busy_s / latency[ref] if latency[ref] > 0.0 else 0.0
        if inst.phase == Phase.PREFILL:
            # Work to come: the queue, and the prompt tokens the measured arrival rate brings in a period
            # (when that exceeds what the last period's busy time covered).
            arriving_tokens = inst.arrivals.tokens_per_s * self.period_s
            iterations = max(iterations, arriving_tokens / max(1, new))
            iterations += sum(q.prompt_tokens for q in waiting) / max(1, new)
            pressure += arriving_tokens / max(1.0, new / max(1, batch))
        work = tuple(iterations * t for t in latency)
        power = average_power_w(self.idle_w, busy_power, work, self.period_s, self.burst_utilization)
        burst = self._burst_power(inst.phase, clocks, busy_power)
        if running:
            # The iteration in flight keeps the clock it started with until it ends, whatever the new ceiling.
            share = min(1.0, (meter.start_s[-1] + meter.latency_s[-1] - now_s) / self.period_s)
            running_w = meter.energy_j[-1] / meter.latency_s[-1]
            power = tuple(share * running_w + (1.0 - share) * p for p in power)
            burst = tuple(share * running_w + (1.0 - share) * b for b in burst)
        return BudgetDemand(
            inst.instance_id,
            clocks,
            power,
            work,
            pressure=pressure,
            need_clock_mhz=inst.period_need_mhz,
            floor_clock_mhz=self._floor(inst.phase, clocks),
            busy_power_w=burst,
        )

    def _burst_power(
        self, phase: Phase, clocks: tuple[int, ...], busy_power: tuple[float, ...]
    ) -> tuple[float, ...]:
        """Power at each clock if the instance is busy the whole period (W): a prefill burst runs full token
        budgets (a queue of prompts fills every iteration), a decode batch is the one it runs now (it grows
        only as fast as prefills finish)."""
        if phase != Phase.PREFILL:
            return busy_power
        if self._full_prefill_w is None:
            self._full_prefill_w = tuple(
                peak_power_w(self.cluster, phase, f, self.context_tokens) for f in clocks
            )
        return tuple(max(b, f) for b, f in zip(busy_power, self._full_prefill_w, strict=True))

    def _floor(self, phase: Phase, clocks: tuple[int, ...]) -> int:
        """The clock a static cap of budget/N allows this phase's heaviest iteration (MHz)."""
        floor = self._floors.get(phase)
        if floor is None:
            share_w = self.coordinator.budget_w / max(1, len(self.instances))
            fitting = [
                f for f in clocks if peak_power_w(self.cluster, phase, f, self.context_tokens) <= share_w
            ]
            floor = self._floors[phase] = fitting[-1] if fitting else clocks[0]
        return floor


def power_windows_w(
    meters: Sequence[MeteredController], idle_w: float, span_s: float, window_s: float = WINDOW_S
) -> np.ndarray:
    """The cluster's average power in consecutive windows of ``window_s`` from 0 to ``span_s`` (W).

    Each instance draws its iterations' energy while busy and ``idle_w`` otherwise (the simulator's energy
    account); a last window shorter than half a window is dropped (too short to judge a 1 s average).
    Shape: ``(ceil(span_s / window_s),)`` or one less.
    """
    count = max(1, math.ceil(span_s / window_s))
    energy = np.zeros(count)
    busy = np.zeros(count)
    for inst in meters:
        meter = inst.meter
        for begin, duration, joules in zip(meter.start_s, meter.latency_s, meter.energy_j, strict=True):
            end = begin + duration
            first = int(begin // window_s)
            last = min(count - 1, int(end // window_s))
            if first >= count or duration <= 0.0:
                continue
            for w in range(first, last + 1):
                overlap = min(end, (w + 1) * window_s) - max(begin, w * window_s)
                if overlap > 0.0:
                    energy[w] += joules * overlap / duration
                    busy[w] += overlap
    lengths = np.full(count, window_s)
    lengths[-1] = span_s - (count - 1) * window_s
    power: np.ndarray = (energy + idle_w * (len(meters) * lengths - busy)) / np.maximum(lengths, 1e-12)
    if count > 1 and lengths[-1] < 0.5 * window_s:
        power = power[:-1]
    return power


@dataclass(frozen=True)
class BudgetRun:
    """One policy at one budget: the simulation's row and the cluster's power in 1 s windows."""

    policy: str
    budget_w: float | None
    budget_share: float | None
    result: PolicyResult
    window_power_w: tuple[float, ...]
    over_budget_share: float
    """Share of 1 s windows whose cluster power exceeds the budget (0 without a budget)."""
    infeasible_periods: int = 0
    """Coordinator periods whose lowest clocks already predicted more than the budget."""
    static_clock_mhz: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the windows summarized: mean, max, p99)."""
        windows = np.asarray(self.window_power_w)
        return {
            "policy": self.policy,
            "budget_w": self.budget_w,
            "budget_share": self.budget_share,
            "over_budget_share": self.over_budget_share,
            "window_power_w": {
                "mean": float(windows.mean()) if len(windows) else 0.0,
                "p99": float(np.percentile(windows, 99)) if len(windows) else 0.0,
                "max": float(windows.max()) if len(windows) else 0.0,
                "count": len(windows),
            },
            "infeasible_periods": self.infeasible_periods,
            "static_clock_mhz": self.static_clock_mhz,
            **self.result.to_json(),
        }


def static_clock_for_budget(
    cluster: ClusterSpec, clocks_mhz: Sequence[int], budget_w: float, context_tokens: int
) -> tuple[int, bool]:
    """The highest clock at which every instance's heaviest iteration together fits ``budget_w``; and
    whether one does (False: the lowest clock, over the budget)."""
    for clock in reversed(clocks_mhz):
        if cluster_peak_power_w(cluster, clock, context_tokens) <= budget_w:
            return int(clock), True
    return int(clocks_mhz[0]), False


def run_budgeted(
    setup: SimulationSetup,
    workload: Workload,
    policy: str,
    budget_w: float | None,
    *,
    budget_share: float | None = None,
    period_s: float = 1.0,
    margin: float = 0.05,
    burst_utilization: float = 0.5,
    clocks_mhz: Sequence[int] = (),
) -> BudgetRun:
    """Simulate ``workload`` under one of :data:`BUDGET_POLICIES` at ``budget_w`` (W), or an ordinary policy
    spec (``static-max``, ``ecofreq+ecoroute``) metered without a budget when ``budget_w`` is None.

    Raises ValueError for an unknown budget policy or a bad budget setting.
    """
    cluster = setup.cluster
    context = mean_decode_context(workload)
    meters: list[MeteredController] = []
    driver: BudgetDriver | None = None
    power_limit_w: float | None = None
    pinned: int | None = None
    if budget_w is None:
        spec = parse_policy(policy)
    elif policy == COORDINATOR:
        spec = parse_policy("ecofreq+ecoroute")
        driver = BudgetDriver(
            BudgetCoordinator(budget_w, margin=margin),
            cluster,
            period_s=period_s,
            burst_utilization=burst_utilization,
            context_tokens=context,
        )
    elif policy in (ECOFREQ_CAPS, STATIC_MAX_CAPS):
        spec = parse_policy("ecofreq+ecoroute" if policy == ECOFREQ_CAPS else "static-max")
        ids = [f"prefill-{i}" for i in range(cluster.num_prefill)] + [
            f"decode-{i}" for i in range(cluster.num_decode)
        ]
        power_limit_w = gpu_power_limit_w(cluster.model, static_power_caps_w(budget_w, ids)[ids[0]])
    elif policy == STATIC_CLOCK:
        if not clocks_mhz:
            raise ValueError("static-clock needs the allowed clocks")
        pinned, _ = static_clock_for_budget(cluster, clocks_mhz, budget_w, context)
        spec = static_spec(pinned, pinned, name=STATIC_CLOCK)
    else:
        raise ValueError(f"unknown budget policy {policy!r}; choose from {', '.join(BUDGET_POLICIES)}")

    def wrap(phase: Phase, instance_id: str, controller: Controller) -> Controller:
        metered = MeteredController(
            controller, phase, instance_id, cluster.model, power_limit_w=power_limit_w, driver=driver
        )
        meters.append(metered)
        if driver is not None:
            driver.instances.append(metered)
        return metered

    result = run_policy(setup, spec, workload, wrap_controller=wrap)
    windows = power_windows_w(meters, float(cluster.model.idle_power_w()), result.span_s)
    over = float(np.mean(windows > budget_w * (1 + 1e-9))) if budget_w is not None and len(windows) else 0.0
    infeasible = sum(1 for _, a in driver.allocations if not a.feasible) if driver is not None else 0
    name = policy if budget_w is not None else spec.name
    return BudgetRun(
        name,
        budget_w,
        budget_share,
        replace(result, policy=name),
        tuple(float(w) for w in windows),
        over,
        infeasible,
        pinned,
    )


def run_budget_sweep(
    setup: SimulationSetup,
    workload: Workload,
    budgets: Sequence[tuple[float, float | None]],
    *,
    policies: Sequence[str] = BUDGET_POLICIES,
    references: Sequence[str] = ("static-max", "ecofreq+ecoroute"),
    period_s: float = 1.0,
    margin: float = 0.05,
    burst_utilization: float = 0.5,
    clocks_mhz: Sequence[int] = (),
    on_run: Callable[[str, float | None], None] | None = None,
) -> list[BudgetRun]:
    """The references without a budget, then every policy at every ``(budget_w, share of peak or None)``."""
    runs: list[BudgetRun] = []
    for name in references:
        runs.append(run_budgeted(setup, workload, name, None))
        if on_run is not None:
            on_run(name, None)
    for budget_w, share in budgets:
        for name in policies:
            runs.append(
                run_budgeted(
                    setup, workload, name, budget_w, budget_share=share, period_s=period_s, margin=margin,
                    burst_utilization=burst_utilization, clocks_mhz=clocks_mhz,
                )
            )  # fmt: skip
            if on_run is not None:
                on_run(name, budget_w)
    return runs
