"""The routing decision: the configured routing policy over the routable instances of one phase.

Policies are registered by plugins (``voltana.plugins.routing``, ``voltana.plugins.ecoroute``, or a third
party's) and looked up once by name (:func:`voltana.core.policies.route_policy`); this module only builds the
candidates and the :class:`RouteContext`, times the call and guards against a policy that answers nothing
usable (then the least-loaded candidate is taken and the miss is counted).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from voltana.core.contexts import RouteContext
from voltana.core.errors import VoltanaError
from voltana.core.policies import RoutePolicy, route_policy
from voltana.core.types import Phase, RouteRequest, Slo
from voltana.router.instances import Instance, InstanceRegistry
from voltana.router.predictors import RoutePredictors

log = logging.getLogger("voltana.router")


class NoInstanceError(VoltanaError):
    """No instance of a phase can take the request; ``saturated`` when some exist but are all full."""

    def __init__(self, phase: Phase, saturated: bool, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.saturated = saturated


def route_context(
    policy: str,
    phase: Phase,
    slo: Slo,
    rng: random.Random,
    options: Mapping[str, Any] | None = None,
    predictors: RoutePredictors | None = None,
) -> RouteContext:
    """The :class:`RouteContext` of one phase: ``options`` plus, with ``predictors``, what clock-aware
    policies read (``allowed_clocks_mhz``, ``idle_power_w``, ``ctx.predictor``, ``ctx.power_model``; see
    ``voltana.plugins.ecoroute``). Used by the HTTP router and the Ray Serve request routers alike."""
    merged = dict(options or {})
    if predictors is not None:
        merged["allowed_clocks_mhz"] = predictors.clocks_mhz  # the engines' clocks, never an option's
        merged.setdefault("idle_power_w", predictors.idle_power_w)
    ctx = RouteContext(policy, phase, slo, rng=rng, options=merged)
    if predictors is not None:
        ctx.predictor = predictors.by_phase.get(phase)
        ctx.power_model = predictors.energy_by_phase.get(phase)
    return ctx


class InstanceChooser:
    """Chooses prefill and decode instances with the registered routing policies named for each phase
    (``hook``: the plugin manager's ``pm.hook``); policies can change at run time. Raises
    ``UnknownPolicyError`` (one line, listing the registered ones) for a policy name no plugin registers."""

    def __init__(
        self,
        hook: Any,
        registry: InstanceRegistry,
        *,
        prefill_policy: str,
        decode_policy: str,
        slo: Slo,
        options: Mapping[str, Any] | None = None,
        seed: int | None = None,
        predictors: RoutePredictors | None = None,
    ) -> None:
        self.hook = hook
        self.registry = registry
        self.policies: dict[Phase, RoutePolicy] = {
            Phase.PREFILL: route_policy(hook, prefill_policy),
            Phase.DECODE: route_policy(hook, decode_policy),
        }
        rng = random.Random(seed)
        self.contexts = {
            phase: route_context(policy, phase, slo, rng, options, predictors)
            for phase, policy in ((Phase.PREFILL, prefill_policy), (Phase.DECODE, decode_policy))
        }
        self.fallbacks = 0
        self.last_decision_ns = 0

    def policy(self, phase: Phase) -> str:
        """The policy name in use for ``phase``."""
        return self.contexts[phase].policy

    def set_policy(self, phase: Phase, name: str) -> None:
        """Switch the policy of ``phase`` (its scratch state is reset); raises ``UnknownPolicyError``."""
        self.policies[phase] = route_policy(self.hook, name)
        ctx = self.contexts[phase]
        ctx.policy = name
        ctx.state.clear()

    def choose(self, phase: Phase, request: RouteRequest, exclude: frozenset[str] = frozenset()) -> Instance:
        """The instance that serves ``request`` in ``phase``; raises :class:`NoInstanceError`."""
        start_ns = time.perf_counter_ns()
        routable = self.registry.routable(phase, exclude)
        if not routable:
            usable = [i for i in self.registry.usable(phase) if i.instance_id not in exclude]
            total = len(self.registry.by_phase[phase])
            if usable:
                raise NoInstanceError(
                    phase,
                    True,
                    f"all {len(usable)} {phase.value} instances are saturated "
                    f"({self.registry.max_inflight_per_instance} requests in flight each); retry later",
                )
            raise NoInstanceError(
                phase, False, f"no healthy {phase.value} instance (0 of {total} available); retry later"
            )
        chosen = routable[0]
        if len(routable) > 1:
            candidates = self.registry.views(routable)
            try:
                picked = self.policies[phase](request, candidates, self.contexts[phase])
            except Exception:
                log.exception("routing policy %r raised; using the least-loaded instance", self.policy(phase))
                picked = None
            found = next((i for i in routable if i.instance_id == picked), None) if picked else None
            if found is None:
                self.fallbacks += 1
                found = min(routable, key=lambda i: i.inflight)
            chosen = found
        self.last_decision_ns = time.perf_counter_ns() - start_ns
        return chosen
