"""The per-instance frequency controller: one clock decision per iteration, learning from each result.

The configured clock policy is looked up once, by name, when the controller is built (an unknown name
raises ``UnknownPolicyError`` there, listing the registered ones); ``decide`` calls only it and always returns
a usable decision: a policy that answers nothing, answers a clock outside the allowed set, or raises, yields
the max clock with a reason.
A power-budget ceiling (:meth:`FrequencyController.set_clock_ceiling`, from ``voltana.core.power_budget``)
clamps every decision: the policy's clock if at or below it, else the highest allowed clock at or below it.
``observe`` feeds the measured latency (and energy) back into the predictors, then broadcasts the record to
``voltana_iteration_finished`` observers (telemetry). Neither ever raises into the engine.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from voltana.core.contexts import ALL_MODELS, ClockContext, ModelKind
from voltana.core.policies import clock_policy
from voltana.core.predictor import EnergyPredictor, LatencyPredictor, features
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason, IterationRecord, Phase, Slo

logger = logging.getLogger(__name__)

_failed_policies: set[str] = set()
"""Clock policies whose exception this process has logged (with its traceback): once per process per policy
name, however many controllers (instances, phases, simulated rates) run it."""
_failed_policies_lock = threading.Lock()


def _first_failure(policy: str) -> bool:
    """True the first time this process sees ``policy`` fail (the caller logs the traceback then)."""
    with _failed_policies_lock:
        if policy in _failed_policies:
            return False
        _failed_policies.add(policy)
        return True


def forget_policy_failures() -> None:
    """Log the next failure of every clock policy again (tests; a long-lived process after a plugin fix)."""
    with _failed_policies_lock:
        _failed_policies.clear()


APPLIED_CLOCK_KEY = "applied_clock_mhz"
"""``ClockContext.state`` key where the controller records the clock the last iteration really ran at."""
WANTED_CLOCK_KEY = "wanted_clock_mhz"
"""``ClockContext.state`` key: the clock the policy chose for the last decision, before any power ceiling (the
budget coordinator reads it as the instance's need)."""


class FrequencyController:
    """Chooses the SM clock of one engine instance for each iteration (see module docstring).

    ``hook``: the plugin manager's hook relay (``pm.hook``): the policy named ``policy`` is looked up in
    what its plugins register, and finished iterations go to its ``voltana_iteration_finished``.
    ``learn``: the models that learn (see ``learns``); the others stay as seeded. Raises
    ``UnknownPolicyError`` (a ``ConfigError``) for an unregistered ``policy``, ``ValueError`` for bad
    clocks. Implements :class:`voltana.core.protocols.Controller`. Invariant: every returned ``clock_mhz`` is
    one of ``allowed_clocks_mhz`` and at most the ceiling's clock.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        phase: Phase,
        allowed_clocks_mhz: Sequence[int],
        slo: Slo,
        policy: str,
        hook: Any,
        predictor: LatencyPredictor,
        power_model: Any | None = None,
        options: Mapping[str, Any] | None = None,
        safety_margin: float = 0.1,
        learn: frozenset[ModelKind] = ALL_MODELS,
    ) -> None:
        clocks = tuple(sorted({int(c) for c in allowed_clocks_mhz}))
        if not clocks or clocks[0] <= 0:
            raise ValueError("allowed_clocks_mhz must contain at least one positive clock")
        if not 0.0 <= safety_margin < 1.0:
            raise ValueError(f"safety_margin must be in [0, 1), got {safety_margin}")
        for name, model in (("predictor", predictor), ("power_model", power_model)):
            grid = getattr(model, "clocks_mhz", clocks)
            if model is not None and tuple(grid) != clocks:
                raise ValueError(f"{name} is built on clocks {tuple(grid)}, not the allowed clocks {clocks}")
        merged = {**(options or {}), "safety_margin": safety_margin}  # the explicit argument wins
        self._choose_clock = clock_policy(hook, policy)  # once: decide() calls only this policy
        self.hook = hook
        self.predictor = predictor
        self.power_model = power_model
        self.ctx = ClockContext(
            policy=policy,
            instance_id=instance_id,
            phase=phase,
            allowed_clocks_mhz=clocks,
            slo=slo,
            predictor=predictor,
            power_model=power_model,
            options=merged,
        )
        self._allowed = frozenset(clocks)
        self.learns: frozenset[ModelKind] = frozenset(learn)
        """The models (``"latency"``: the predictor, ``"energy"``: the power model) :meth:`observe` feeds
        measured iterations into. Less than both only where nothing reads the others (a fixed clock with
        model-blind routing reads none, the paper's policy and routes no energy; in the simulator): those
        stay as seeded, and each iteration costs no update of them."""
        self._policy_failed = False
        self._observer_failed = False

    @property
    def allowed_clocks_mhz(self) -> tuple[int, ...]:
        """The ascending clock set every decision is drawn from (MHz)."""
        return self.ctx.allowed_clocks_mhz

    @property
    def policy(self) -> str:
        """The name of the clock policy this controller calls."""
        return self.ctx.policy

    @property
    def clock_ceiling_mhz(self) -> int | None:
        """The power-budget ceiling in force (MHz; None: no budget)."""
        return self.ctx.clock_ceiling_mhz

    def set_clock_ceiling(self, clock_mhz: int | None) -> None:
        """Hold every later decision at or below ``clock_mhz`` (None lifts the ceiling).

        A ceiling below the lowest allowed clock holds the lowest allowed clock (the budget is then reported
        infeasible by the coordinator, not here).
        """
        self.ctx.clock_ceiling_mhz = None if clock_mhz is None else int(clock_mhz)

    def decide(self, snapshot: BatchSnapshot) -> ClockDecision:
        """The clock for the iteration in ``snapshot``; never raises."""
        decision = self._decide(snapshot)
        self.ctx.state[WANTED_CLOCK_KEY] = decision.clock_mhz
        ceiling = self.ctx.clock_ceiling_mhz
        if ceiling is None or decision.clock_mhz <= ceiling:
            return decision
        clocks = self.ctx.allowed_clocks_mhz
        capped = clocks[max(0, bisect.bisect_right(clocks, ceiling) - 1)]
        return ClockDecision(capped, DecisionReason.POWER_CEILING, decision.policy)

    def _decide(self, snapshot: BatchSnapshot) -> ClockDecision:
        try:
            decision = self._choose_clock(snapshot, self.ctx)
        except Exception:
            if not self._policy_failed:
                self._policy_failed = True
                if _first_failure(self.ctx.policy):
                    logger.exception(
                        "clock policy %r failed; using the max clock (logged once per process)",
                        self.ctx.policy,
                    )
            return ClockDecision(self.ctx.max_clock_mhz, DecisionReason.NO_POLICY, self.ctx.policy)
        if decision is None:
            return ClockDecision(self.ctx.max_clock_mhz, DecisionReason.NO_POLICY, self.ctx.policy)
        if decision.clock_mhz not in self._allowed:
            return ClockDecision(
                self._round_up(decision.clock_mhz),
                decision.reason,
                decision.policy,
                decision.predicted_latency_s,
                decision.predicted_energy_j,
            )
        return decision

    def observe(self, record: IterationRecord) -> None:
        """Learn from a finished iteration, then broadcast it to observers; never raises."""
        self.ctx.state[APPLIED_CLOCK_KEY] = record.applied_clock_mhz
        try:
            learns = self.learns
            snapshot = record.snapshot
            if learns and snapshot.requests and record.latency_s > 0.0:
                # Hot path: the features once for both models (their observe_iteration, spelt out).
                x0, x1 = features(snapshot)
                if "latency" in learns:
                    self.predictor.observe(x0, x1, record.applied_clock_mhz, record.latency_s)
                if (
                    "energy" in learns
                    and isinstance(self.power_model, EnergyPredictor)
                    and record.energy_j is not None
                ):
                    self.power_model.observe(x0, x1, record.applied_clock_mhz, record.energy_j)
            self.hook.voltana_iteration_finished(record=record)
        except Exception:
            if not self._observer_failed:
                logger.exception("iteration observer failed (reported once per controller)")
                self._observer_failed = True

    def _round_up(self, clock_mhz: int) -> int:
        clocks = self.ctx.allowed_clocks_mhz
        return clocks[min(bisect.bisect_left(clocks, clock_mhz), len(clocks) - 1)]
