"""Replica state as Ray Serve routing stats, and the :class:`InstanceState` a routing policy sees.

A replica's ``record_routing_stats()`` returns ``{"voltana": state}``, where ``state`` is the engine adapters'
``GET /voltana/state`` payload (:class:`voltana.core.state_payload.InstanceStatePayload` as JSON):
``instance_id``, ``role``, ``policy``, ``sm_clock_mhz``, ``capture_sizes``, ``num_requests_running``,
``num_requests_waiting``, ``kv_tokens``, ``kv_capacity_tokens``, ``iterations``, ``updated_at_s`` (Unix time),
``energy_joules`` with ``energy_source`` (GPU energy since the replica started, J; read as unknown when the
source is ``unknown``), ``clock_ceiling_mhz`` (the power budget's ceiling in force, MHz, or null) and
``version``. Ray's controller polls it every
``request_routing_stats_period_s`` and hands it to every request router as ``RunningReplica.routing_stats``;
the ``"voltana"`` key leaves room for other stats (Ray Serve LLM's own).

No Ray import here: the mapping is pure and tested alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from voltana.core.state_payload import InstanceStatePayload
from voltana.core.types import EnergySource, InstanceState, Phase

ROUTING_STATS_KEY = "voltana"
DEFAULT_RECORDED_DECISIONS = 4096

# The routers' decisions in this process, oldest first. Kept here rather than in ``routing``: Ray may ship a
# request-router class by value (cloudpickle), which gives the class a private copy of its module's globals.
_DECISIONS: deque[dict[str, Any]] = deque(maxlen=DEFAULT_RECORDED_DECISIONS)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int:
    number = _float(value)
    return int(number) if number is not None else 0


def _energy_j(state: Mapping[str, Any]) -> float | None:
    """The payload's ``energy_joules`` unless its ``energy_source`` is unknown (missing: unknown)."""
    if state.get("energy_source", EnergySource.UNKNOWN.value) == EnergySource.UNKNOWN.value:
        return None
    return _float(state.get("energy_joules"))


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """One replica's voltana state (counts of requests, tokens; clock in MHz; energy in J; time in Unix s)."""

    instance_id: str = ""
    role: str = ""
    policy: str = ""
    sm_clock_mhz: int | None = None
    capture_sizes: tuple[int, ...] = ()
    num_running: int = 0
    num_waiting: int = 0
    kv_tokens: int = 0
    kv_capacity_tokens: int = 0
    iterations: int = 0
    energy_j: float | None = None
    updated_at_s: float = 0.0
    clock_ceiling_mhz: int | None = None

    def to_state(self) -> dict[str, Any]:
        """The ``/voltana/state`` payload (:class:`InstanceStatePayload`'s JSON; the Ray engine's energy is
        the simulated GPU's, ``energy_source`` ``unknown`` when ``energy_j`` is None)."""
        source = EnergySource.UNKNOWN if self.energy_j is None else EnergySource.SIMULATED
        return InstanceStatePayload(
            instance_id=self.instance_id,
            role=self.role,
            policy=self.policy,
            monitor_only=False,
            sm_clock_mhz=self.sm_clock_mhz,
            capture_sizes=self.capture_sizes,
            num_requests_running=self.num_running,
            num_requests_waiting=self.num_waiting,
            kv_tokens=self.kv_tokens,
            kv_capacity_tokens=self.kv_capacity_tokens,
            iterations=self.iterations,
            energy_source=source.value,
            energy_joules=self.energy_j or 0.0,
            updated_at_s=self.updated_at_s,
            clock_ceiling_mhz=self.clock_ceiling_mhz,
        ).to_json()

    def to_routing_stats(self) -> dict[str, Any]:
        """What ``record_routing_stats()`` returns: ``{"voltana": <state>}``."""
        return {ROUTING_STATS_KEY: self.to_state()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ReplicaStats:
        """Parse a ``/voltana/state``-shaped mapping; fields of the wrong type take their defaults."""
        clock = state.get("sm_clock_mhz")
        ceiling = state.get("clock_ceiling_mhz")
        sizes = state.get("capture_sizes")
        return cls(
            instance_id=str(state.get("instance_id", "")),
            role=str(state.get("role", "")),
            policy=str(state.get("policy", "")),
            sm_clock_mhz=None if _float(clock) is None else _int(clock),
            capture_sizes=tuple(sorted(_int(s) for s in sizes if isinstance(s, int)))
            if isinstance(sizes, list | tuple)
            else (),
            num_running=_int(state.get("num_requests_running")),
            num_waiting=_int(state.get("num_requests_waiting")),
            kv_tokens=_int(state.get("kv_tokens")),
            kv_capacity_tokens=_int(state.get("kv_capacity_tokens")),
            iterations=_int(state.get("iterations")),
            energy_j=_energy_j(state),
            updated_at_s=_float(state.get("updated_at_s")) or 0.0,
            clock_ceiling_mhz=None if _float(ceiling) is None else _int(ceiling),
        )

    @classmethod
    def from_routing_stats(cls, routing_stats: Mapping[str, Any] | None) -> ReplicaStats | None:
        """The voltana part of a replica's ``routing_stats``, or None when it publishes none."""
        state = (routing_stats or {}).get(ROUTING_STATS_KEY)
        return cls.from_state(state) if isinstance(state, Mapping) else None


def instance_state(
    replica_id: str,
    phase: Phase,
    stats: ReplicaStats | None,
    inflight: int,
    now_s: float,
    stale_after_s: float,
) -> InstanceState:
    """What a routing policy sees of one replica (the HTTP router's rule, ``voltana.router.instances``).

    ``inflight``: requests this router sent to the replica and that have not completed (exact, local).
    Published load (running, waiting, KV) counts only while ``stats`` is younger than ``stale_after_s``;
    running requests are then the larger of the published count (all routers' requests, as of the last
    poll) and ``inflight`` (this router's, up to now). Clock, capture sizes and KV capacity always count.
    """
    running, waiting, kv = inflight, 0, 0
    if stats is None:
        return InstanceState(replica_id, phase, num_running=running, healthy=True)
    if now_s - stats.updated_at_s <= stale_after_s:
        running = max(inflight, stats.num_running)
        waiting = stats.num_waiting
        kv = stats.kv_tokens
    return InstanceState(
        instance_id=replica_id,
        phase=phase,
        num_running=running,
        num_waiting=waiting,
        kv_tokens=kv,
        kv_capacity_tokens=stats.kv_capacity_tokens,
        sm_clock_mhz=stats.sm_clock_mhz,
        capture_sizes=stats.capture_sizes,
        healthy=True,
        updated_at_s=stats.updated_at_s,
    )


def decision_log(maxlen: int = DEFAULT_RECORDED_DECISIONS) -> deque[dict[str, Any]]:
    """The (bounded) log the request routers of this process append their decisions to; the largest
    ``maxlen`` any router asked for wins."""
    global _DECISIONS
    if _DECISIONS.maxlen is not None and maxlen > _DECISIONS.maxlen:
        _DECISIONS = deque(_DECISIONS, maxlen=maxlen)
    return _DECISIONS


def recorded_decisions(phase: Phase | str | None = None) -> list[dict[str, Any]]:
    """Decisions the request routers of this process made (oldest first), of one ``phase`` or all.

    Each: ``phase``, ``policy``, ``request_id``, ``input_tokens``, ``max_output_tokens``, ``candidates``
    (the ``InstanceState`` fields of each candidate, as the policy saw them), ``published`` (each
    candidate's last published state, energy included, or None), ``chosen`` (replica id), ``fallback``
    (True when the policy answered nothing usable) and ``decision_s``.
    """
    wanted = Phase(phase).value if phase is not None else None
    return [_json_ready(d) for d in list(_DECISIONS) if wanted is None or d["phase"] == wanted]


def _json_ready(decision: Mapping[str, Any]) -> dict[str, Any]:
    """A logged decision with its ``InstanceState``/``ReplicaStats`` objects as plain dicts."""
    ready = dict(decision)
    ready["candidates"] = [{**asdict(s), "phase": s.phase.value} for s in decision["candidates"]]
    ready["published"] = [p.to_state() if p is not None else None for p in decision["published"]]
    return ready


def state_from_record(fields: Mapping[str, Any]) -> InstanceState:
    """The :class:`InstanceState` a recorded candidate was (inverse of :func:`recorded_decisions`'s dicts)."""
    data = dict(fields)
    data["phase"] = Phase(data["phase"])
    data["capture_sizes"] = tuple(data.get("capture_sizes", ()))
    return InstanceState(**data)
