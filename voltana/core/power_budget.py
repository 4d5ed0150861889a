"""Cluster power budget: a clock ceiling per instance so that the cluster's predicted power stays under it.

Every budget period (``cluster.budget_period_s``, 1 s by default) the caller describes each instance for the
next period as a :class:`BudgetDemand`: its allowed clocks, its predicted average power at each clock, the
predicted time its pending work takes at each clock, how many requests wait on that work (the SLO pressure)
and the lowest clock its own clock policy needs to meet the SLOs (EcoFreq's choice, which already reads the
queue, the arrival rate and the decode backlog). :meth:`BudgetCoordinator.allocate` then answers one ceiling
per instance (a :class:`BudgetAllocation`); the instance's clock policy chooses freely at or below it.

The allocation is a greedy marginal rule (a knapsack over clock steps, each step a few watts):

1. every instance starts at its floor clock (``floor_clock_mhz``: what a static per-GPU power cap of
   ``budget / N`` would let its heaviest iteration run at, so that no instance is worse off than under
   static caps), or at its lowest clock when the floors together do not fit; if even the lowest clocks
   predict more than the budget, the allocation is flagged infeasible (``feasible=False``, and a warning is
   logged once per change) and every ceiling stays at the lowest clock: the overshoot is reported, never
   hidden;
2. steps below an instance's need clock come first: the step with the largest SLO benefit per extra watt is
   taken while it fits, where the benefit of raising instance ``i`` from clock ``k`` to ``k+1`` is
   ``pressure_i * (work_s_i[k] - work_s_i[k+1])`` (request-seconds of waiting saved in one period);
3. what budget is left then buys steps above the needs by the same ratio (zero-pressure instances last, so a
   burst starting mid-period on an idle instance still finds a clock above its floor when the budget allows);
   each of these steps is charged at the larger of its predicted-average and its busy-power increment
   (``busy_power_w``: the power if busy the whole period at that clock, e.g. a prefill burst of full token
   budgets), because a ceiling above an instance's need is only used when its load grows within the period,
   and then it is busy: a predicted average (``burst_utilization`` 0.5) would charge half of what a burst
   draws there. In the simulator's bursty 60 %-budget scenario that under-charge was the overshoot: both
   prefill instances fully busy at 1245-1410 MHz, 56-166 W each above their predicted average.
   ``committed_power_w`` is what was charged, ``predicted_power_w`` the expected average.

The target is ``budget_w * (1 - margin)``: the margin absorbs prediction error within one period that the
charging does not cover (an instance busier than predicted at or below its need clock, a decode batch that
grows within the period, an iteration still running at a clock above a lowered ceiling); it is not a bound
on the error, so a window can still exceed the budget. Measured
power corrects the prediction: :meth:`BudgetCoordinator.observe_power` keeps, per instance, an exponentially
weighted ratio of measured to predicted average power, which multiplies that instance's predicted power in
later allocations (bounded to ``[0.5, 2]`` so that one bad sample cannot starve or flood an instance).

Pure: no I/O, no clocks, no threads; the caller (simulator, router) owns time and measurement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_PERIOD_S = 1.0
"""How often ceilings are recomputed (s): the 1 s window of NVML's averaged power reading on Ampere+."""
DEFAULT_MARGIN = 0.05
"""Share of the budget kept in reserve for prediction error within one period."""
DEFAULT_CORRECTION_ALPHA = 0.3
"""Weight of the newest measured/predicted power ratio in the per-instance correction (EWMA)."""
CORRECTION_BOUNDS = (0.5, 2.0)
"""Bounds of a correction ratio (a meter glitch must not starve or flood an instance)."""


@dataclass(frozen=True, slots=True)
class BudgetDemand:
    """One instance's description for the next budget period.

    ``clocks_mhz`` is ascending and non-empty; ``power_w`` (predicted average power over the period, W) and
    ``work_s`` (predicted busy time of the instance's pending and expected work, s) have one entry per clock.
    ``pressure`` >= 0 counts the requests that wait on that work (queue, running batch, expected arrivals);
    ``need_clock_mhz`` is the lowest clock the instance's policy needs (None: its lowest clock);
    ``floor_clock_mhz`` the clock it keeps whenever the floors fit the budget together (None: its lowest).
    Raises ValueError for inconsistent lengths, an empty clock set or a negative pressure.
    """

    instance_id: str
    clocks_mhz: tuple[int, ...]
    power_w: tuple[float, ...]
    work_s: tuple[float, ...]
    pressure: float = 0.0
    need_clock_mhz: int | None = None
    floor_clock_mhz: int | None = None
    busy_power_w: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.clocks_mhz)
        if n == 0 or len(self.power_w) != n or len(self.work_s) != n:
            raise ValueError(
                f"{self.instance_id}: clocks_mhz, power_w and work_s need the same non-zero length "
                f"(got {n}, {len(self.power_w)}, {len(self.work_s)})"
            )
        if self.busy_power_w is not None and len(self.busy_power_w) != n:
            raise ValueError(
                f"{self.instance_id}: busy_power_w needs one entry per clock (got {len(self.busy_power_w)}, "
                f"{n} clocks)"
            )
        if any(b <= a for a, b in zip(self.clocks_mhz, self.clocks_mhz[1:], strict=False)):
            raise ValueError(f"{self.instance_id}: clocks_mhz must be strictly ascending")
        if not self.pressure >= 0.0:
            raise ValueError(f"{self.instance_id}: pressure must be >= 0, got {self.pressure}")

    def need_index(self) -> int:
        """Index of the lowest clock >= ``need_clock_mhz`` (the top clock if the need exceeds it)."""
        if self.need_clock_mhz is None:
            return 0
        for index, clock in enumerate(self.clocks_mhz):
            if clock >= self.need_clock_mhz:
                return index
        return len(self.clocks_mhz) - 1

    def floor_index(self) -> int:
        """Index of the highest clock <= ``floor_clock_mhz`` (0 without a floor or below every clock)."""
        if self.floor_clock_mhz is None:
            return 0
        below = [i for i, clock in enumerate(self.clocks_mhz) if clock <= self.floor_clock_mhz]
        return below[-1] if below else 0


@dataclass(frozen=True, slots=True)
class BudgetAllocation:
    """The ceilings of one period and what the coordinator predicts for them.

    ``feasible`` is False when the lowest clocks already predict more than the budget (then every ceiling is
    the lowest clock and ``predicted_power_w`` exceeds ``budget_w``); ``unmet_needs`` lists the instances
    whose ceiling is below their need clock (SLO loss the budget forces).
    """

    ceilings_mhz: dict[str, int]
    predicted_power_w: float
    budget_w: float
    feasible: bool
    unmet_needs: tuple[str, ...] = ()
    predicted_by_instance_w: dict[str, float] = field(default_factory=dict)
    committed_power_w: float = 0.0
    """What the allocation charged against the budget (W): the predicted power, with every clock step bought
    from the leftover budget (above an instance's need) charged at its busy power; at least
    ``predicted_power_w``, and when feasible at most the budget (at most the target unless the starting
    clocks alone predict more)."""


class BudgetCoordinator:
    """Shares ``budget_w`` among instances, one allocation per period (see the module docstring).

    Raises ValueError for a non-positive budget or a margin outside ``[0, 1)``.
    """

    def __init__(
        self,
        budget_w: float,
        *,
        margin: float = DEFAULT_MARGIN,
        correction_alpha: float = DEFAULT_CORRECTION_ALPHA,
    ) -> None:
        if not (budget_w > 0.0 and math.isfinite(budget_w)):
            raise ValueError(f"power budget must be a positive number of watts, got {budget_w}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"budget margin must be in [0, 1), got {margin}")
        if not 0.0 < correction_alpha <= 1.0:
            raise ValueError(f"correction_alpha must be in (0, 1], got {correction_alpha}")
        self.budget_w = float(budget_w)
        self.margin = float(margin)
        self.correction_alpha = float(correction_alpha)
        self._ratio: dict[str, float] = {}
        self._reported_infeasible = False

    @property
    def target_w(self) -> float:
        """The power the allocation aims under: the budget less the margin (W)."""
        return self.budget_w * (1.0 - self.margin)

    def correction(self, instance_id: str) -> float:
        """Measured/predicted power ratio applied to ``instance_id``'s predictions (1.0 until measured)."""
        return self._ratio.get(instance_id, 1.0)

    def observe_power(self, instance_id: str, predicted_w: float, measured_w: float) -> None:
        """Fold one period's measured average power against what was predicted for it (both W).

        Non-positive or non-finite values are ignored (an instance without a meter keeps ratio 1).
        """
        if not (predicted_w > 0.0 and measured_w > 0.0 and math.isfinite(predicted_w + measured_w)):
            return
        low, high = CORRECTION_BOUNDS
        sample = min(high, max(low, measured_w / predicted_w))
        old = self._ratio.get(instance_id)
        alpha = self.correction_alpha
        self._ratio[instance_id] = sample if old is None else (1.0 - alpha) * old + alpha * sample

    def allocate(self, demands: Sequence[BudgetDemand]) -> BudgetAllocation:
        """One ceiling per instance for the next period (see the module docstring for the rule)."""
        if not demands:
            return BudgetAllocation({}, 0.0, self.budget_w, True)
        power = [tuple(self.correction(d.instance_id) * p for p in d.power_w) for d in demands]
        level = [0] * len(demands)
        total = sum(p[0] for p in power)
        committed = total
        feasible = total <= self.budget_w
        if not feasible:
            if not self._reported_infeasible:
                logger.warning(
                    "power budget %.0f W cannot be met: the lowest clocks already predict %.0f W; every "
                    "instance is held at its lowest clock",
                    self.budget_w,
                    total,
                )
            self._reported_infeasible = True
        else:
            self._reported_infeasible = False
            floors = [d.floor_index() for d in demands]
            at_floors = sum(p[k] for p, k in zip(power, floors, strict=True))
            if at_floors <= self.budget_w:
                level, total = floors, at_floors
            needs = [d.need_index() for d in demands]
            total = self._raise(demands, power, level, total, needs)
            # Above the needs every step is charged at its busy-power increment: a ceiling the leftover
            # budget buys is paid as if a burst kept the instance busy the whole period at it.
            charged = [
                _charged_above(d, p, k, self.correction(d.instance_id))
                for d, p, k in zip(demands, power, level, strict=True)
            ]
            total = self._raise(demands, charged, level, total, [len(d.clocks_mhz) - 1 for d in demands])
            committed = total
        ceilings = {d.instance_id: d.clocks_mhz[k] for d, k in zip(demands, level, strict=True)}
        unmet = tuple(d.instance_id for d, k in zip(demands, level, strict=True) if k < d.need_index())
        by_instance = {d.instance_id: p[k] for d, p, k in zip(demands, power, level, strict=True)}
        predicted = sum(by_instance.values())
        # The running total and this fresh sum add the same terms in another order: with no step charged
        # above the needs they may differ in the last bit, and what is charged is never below the average.
        committed = max(committed, predicted)
        return BudgetAllocation(ceilings, predicted, self.budget_w, feasible, unmet, by_instance, committed)

    def _raise(
        self,
        demands: Sequence[BudgetDemand],
        power: Sequence[tuple[float, ...]],
        level: list[int],
        total: float,
        limits: Sequence[int],
    ) -> float:
        """Take clock steps (up to ``limits``) by SLO benefit per watt while they fit; returns the total."""
        target = self.target_w
        while True:
            best = -1
            best_score: tuple[float, float, float] = (-math.inf, -math.inf, -math.inf)
            for i, demand in enumerate(demands):
                k = level[i]
                if k >= limits[i]:
                    continue
                extra_w = power[i][k + 1] - power[i][k]
                if total + extra_w > target:
                    continue
                saved_s = max(0.0, demand.work_s[k] - demand.work_s[k + 1])
                benefit = demand.pressure * saved_s
                # A free step is taken first; ties go to the instance with more pressure, then to the one
                # with the lower clock (spare budget is spread evenly among instances without pressure).
                per_w = math.inf if extra_w <= 0.0 else benefit / extra_w
                score = (per_w, demand.pressure, -demand.clocks_mhz[k])
                if score > best_score:
                    best, best_score = i, score
            if best < 0:
                return total
            k = level[best]
            total += power[best][k + 1] - power[best][k]
            level[best] = k + 1


def _charged_above(
    demand: BudgetDemand, power: tuple[float, ...], base: int, correction: float
) -> tuple[float, ...]:
    """``power`` up to index ``base``; above it every step costs the larger of its predicted-average and its
    busy-power increment (W): a clock bought from the leftover budget is paid as if the instance became busy
    for the whole period at it (a burst within the period), so what a burst draws above the base clock's
    busy power is paid for."""
    busy = demand.busy_power_w
    if busy is None:
        return power
    out = list(power[: base + 1])
    for k in range(base, len(power) - 1):
        step_w = max(power[k + 1] - power[k], correction * (busy[k + 1] - busy[k]))
        out.append(out[-1] + step_w)
    return tuple(out)


def average_power_w(
    idle_w: float,
    busy_power_w: Sequence[float],
    work_s: Sequence[float],
    period_s: float,
    burst_utilization: float,
) -> tuple[float, ...]:
    """Predicted average power over one period at each clock (W): ``idle + u(f) * (busy(f) - idle)``.

    ``busy_power_w`` is the instance's power while computing at each clock (W), ``work_s`` its predicted
    busy time at each clock (s); the busy share ``u(f) = work_s / period_s`` is at least
    ``burst_utilization`` (headroom for a burst that starts within the period) and at most 1.
    """
    floor = min(1.0, max(0.0, burst_utilization))
    return tuple(
        idle_w + min(1.0, max(floor, w / period_s)) * (p - idle_w)
        for w, p in zip(work_s, busy_power_w, strict=True)
    )


def static_power_caps_w(budget_w: float, instance_ids: Sequence[str]) -> Mapping[str, float]:
    """The baseline the coordinator is compared with: every instance gets ``budget_w / N`` (W)."""
    if not instance_ids:
        return {}
    share = budget_w / len(instance_ids)
    return {instance_id: share for instance_id in instance_ids}
