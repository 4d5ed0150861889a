"""Ray Serve request routers that place requests with voltana's routing policies.

:class:`VoltanaDecodeRouter` and :class:`VoltanaPrefillRouter` subclass ``ray.serve.request_router.
RequestRouter`` and, in ``choose_replicas``, call the same registered routing policy as ``voltana router``
and the simulator (EcoRoute, predicted-TTFT, the baselines, a third party's policy; looked up once by name),
over one
:class:`~voltana.core.types.InstanceState` per candidate replica built by
:func:`~voltana.integrations.ray_serve.stats.instance_state` from the replica's published ``routing_stats``
and this router's own in-flight count. They answer the chosen replica alone (when Ray's queue-length probe of
it times out, Ray asks again, and the policy decides again on fresher state), or, once this router has
``max_ongoing_requests`` in flight on it, two ranks: the chosen replica, then the others.

Configure per deployment: ``RequestRouterConfig(request_router_class=VoltanaDecodeRouter,
request_router_kwargs={...})``; kwargs (:meth:`VoltanaRequestRouter.initialize_state`): ``policy`` (default
``policy.decode_route`` / ``policy.prefill_route`` of ``config``), ``config`` (a voltana config as a dict:
SLOs, ``policy.options``, the simulated GPU or ``engine.predictor_profile`` that seeds clock-aware policies),
``seed``, ``stale_after_s`` and ``record_decisions`` (how many decisions
:func:`~voltana.integrations.ray_serve.stats.recorded_decisions` keeps).

A router object lives in every process that holds a handle to the deployment (the ingress, or the decode
replicas for the prefill deployment in Ray Serve LLM's decode-orchestrated P/D).
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from voltana.core.config import VoltanaConfig
from voltana.core.policies import route_policy
from voltana.core.types import InstanceState, Phase, RouteRequest, Slo
from voltana.integrations.ray_serve import stats
from voltana.integrations.ray_serve.stats import ReplicaStats, instance_state
from voltana.plugins import get_plugin_manager
from voltana.plugins.routing_options import route_options
from voltana.router.choice import route_context
from voltana.router.predictors import route_predictors

log = logging.getLogger("voltana.ray_serve")

ROUTE_KEY = "voltana_route"
"""Key of the first positional argument (a dict) of a handle call carrying the request's routing facts."""
DEFAULT_STALE_AFTER_S = 5.0


def route_request_of(pending_request: PendingRequest | None) -> RouteRequest:
    """The :class:`RouteRequest` of a handle call: from ``args[0]["voltana_route"]`` (``request_id``,
    ``input_tokens``, ``max_output_tokens``), else its Serve request id with no token counts."""
    if pending_request is None:
        return RouteRequest("", 0)
    args = pending_request.args
    route = args[0].get(ROUTE_KEY) if args and isinstance(args[0], Mapping) else None
    if isinstance(route, Mapping):
        return RouteRequest(
            str(route.get("request_id", "")),
            int(route.get("input_tokens", 0)),
            int(route.get("max_output_tokens", 0)),
            float(route.get("arrival_time_s", 0.0)),
        )
    return RouteRequest(str(pending_request.metadata.request_id), 0)


class VoltanaRequestRouter(RequestRouter):
    """Base of the voltana request routers; ``phase`` says which deployment it fronts."""

    phase: ClassVar[Phase] = Phase.DECODE

    def initialize_state(
        self,
        policy: str | None = None,
        config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        record_decisions: int = stats.DEFAULT_RECORDED_DECISIONS,
        **_: Any,
    ) -> None:
        """Called by Ray Serve with ``request_router_kwargs`` (see module docstring); a bad config raises
        ``ConfigError``/``ValueError`` with one line."""
        voltana = VoltanaConfig(**dict(config or {}))
        name = policy or (
            voltana.policy.decode_route if self.phase is Phase.DECODE else voltana.policy.prefill_route
        )
        options = route_options(voltana.policy)
        slo = Slo(voltana.slo.ttft_s, voltana.slo.itl_s)
        self._hook = get_plugin_manager().hook
        self._choose = route_policy(self._hook, name)  # once; unknown: UnknownPolicyError (a ConfigError)
        self._ctx = route_context(
            name, self.phase, slo, random.Random(seed), options, route_predictors(voltana)
        )
        self._stale_after_s = stale_after_s
        self._inflight: dict[ReplicaID, int] = defaultdict(int)
        self._parsed: dict[ReplicaID, tuple[Any, ReplicaStats | None]] = {}
        self._record_decisions = record_decisions
        self.fallbacks = 0
        self.last_decision_s = 0.0

    @property
    def policy(self) -> str:
        """The routing policy in use."""
        return str(self._ctx.policy)

    def _ensure_state(self) -> None:
        if not hasattr(self, "_ctx"):  # Ray calls initialize_state only when kwargs are configured
            self.initialize_state()

    def candidate_states(
        self, replicas: Sequence[RunningReplica]
    ) -> tuple[list[InstanceState], list[ReplicaStats | None]]:
        """The policy's view of ``replicas`` now (one :class:`InstanceState` each, same order), and the
        state each replica published last (None when it published none)."""
        now_s = time.time()
        published = [self._published(r) for r in replicas]
        states = [
            instance_state(
                r.replica_id.unique_id,
                self.phase,
                stats,
                self._inflight.get(r.replica_id, 0),
                now_s,
                self._stale_after_s,
            )
            for r, stats in zip(replicas, published, strict=True)
        ]
        return states, published

    def _published(self, replica: RunningReplica) -> ReplicaStats | None:
        """``replica``'s parsed routing stats, parsed again only when Ray handed new ones."""
        raw = replica.routing_stats
        cached = self._parsed.get(replica.replica_id)
        if cached is None or cached[0] is not raw:
            cached = (raw, ReplicaStats.from_routing_stats(raw))
            self._parsed[replica.replica_id] = cached
        return cached[1]

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Rank ``candidate_replicas``: [[the policy's choice]] (see module docstring)."""
        if not candidate_replicas:
            return []
        self._ensure_state()
        start = time.perf_counter()
        request = route_request_of(pending_request)
        states, published = self.candidate_states(candidate_replicas)
        picked: str | None = states[0].instance_id if len(states) == 1 else None
        if picked is None:
            try:
                picked = self._choose(request, states, self._ctx)
            except Exception:
                log.exception("routing policy %r raised; using the least-loaded replica", self.policy)
        index = next((i for i, s in enumerate(states) if s.instance_id == picked), None)
        fallback = index is None
        if index is None:
            self.fallbacks += 1
            index = min(range(len(states)), key=lambda i: states[i].num_running + states[i].num_waiting)
        self.last_decision_s = time.perf_counter() - start
        stats.decision_log(self._record_decisions).append(
            {
                "phase": self.phase.value,
                "policy": self.policy,
                "request_id": request.request_id,
                "input_tokens": request.input_tokens,
                "max_output_tokens": request.max_output_tokens,
                "candidates": tuple(states),  # frozen: made JSON-ready when read
                "published": tuple(published),
                "chosen": states[index].instance_id,
                "fallback": fallback,
                "decision_s": self.last_decision_s,
            }
        )
        chosen = candidate_replicas[index]
        if self._inflight.get(chosen.replica_id, 0) < chosen.max_ongoing_requests:
            return [[chosen]]  # binding: a slow queue-length probe makes Ray ask again, not go elsewhere
        return [[chosen], [r for r in candidate_replicas if r is not chosen]]

    # --- in-flight bookkeeping (Ray's lifecycle callbacks) ---------------------------------------------
    def on_send_request(self, replica_id: ReplicaID) -> None:
        """A request went to ``replica_id``."""
        super().on_send_request(replica_id)
        self._ensure_state()
        self._inflight[replica_id] += 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """A request to ``replica_id`` finished (successfully or not)."""
        super().on_request_completed(replica_id, internal_request_id)
        self._ensure_state()
        if self._inflight.get(replica_id, 0) > 0:
            self._inflight[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Forget a dead replica (Ray drops it from the candidates)."""
        super().on_replica_actor_died(replica_id)
        self._ensure_state()
        self._inflight.pop(replica_id, None)
        self._parsed.pop(replica_id, None)


class VoltanaDecodeRouter(VoltanaRequestRouter):
    """Routes to the decode deployment (default policy: ``policy.decode_route``, EcoRoute)."""

    phase = Phase.DECODE


class VoltanaPrefillRouter(VoltanaRequestRouter):
    """Routes to the prefill deployment (default policy: ``policy.prefill_route``, energy-ttft)."""

    phase = Phase.PREFILL
