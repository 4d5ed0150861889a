"""The engine-neutral vocabulary shared by every layer.

Units are in the names: ``_s`` seconds, ``_mhz`` megahertz, ``_j`` joules, ``_w`` watts. All ``*_time_s``
timestamps of one instance use one monotonic clock chosen by its adapter; policies only take differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DEFAULT_PREFILL_TOKEN_BUDGET = 8192
"""Prompt tokens per prefill iteration by default: vLLM's ``max_num_batched_tokens`` with chunked prefill and
SGLang's ``chunked_prefill_size`` on large GPUs (the engines' defaults; configurable per instance)."""


class Phase(StrEnum):
    """Which half of P/D serving an iteration (or an instance) belongs to."""

    PREFILL = "prefill"
    DECODE = "decode"


class EnergySource(StrEnum):
    """Where an energy figure comes from, carried by every record, span, metric and state payload.

    ``measured``: the GPU's cumulative energy counter; ``power-integrated``: the driver's power reading
    integrated over time (no counter, or it failed); ``simulated``: the simulated GPU's performance model;
    ``unknown``: no energy figure at all.
    """

    MEASURED = "measured"
    POWER_INTEGRATED = "power-integrated"
    SIMULATED = "simulated"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Slo:
    """Latency objectives: time to first token and inter-token latency, in seconds."""

    ttft_s: float
    itl_s: float

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.itl_s > 0):
            raise ValueError(f"SLOs must be positive, got ttft_s={self.ttft_s}, itl_s={self.itl_s}")

    def for_phase(self, phase: Phase) -> float:
        """The latency bound of one phase: TTFT for prefill, ITL for decode (s)."""
        return self.ttft_s if phase is Phase.PREFILL else self.itl_s


@dataclass(frozen=True, slots=True, init=False)
class ScheduledRequest:
    """One request's share of an iteration.

    ``new_tokens`` are computed in this iteration (a prefill chunk, or 1 for decode); ``context_tokens`` were
    already in the KV cache before it (cached prefix, earlier chunks, generated tokens).
    """

    request_id: str
    new_tokens: int
    context_tokens: int
    arrival_time_s: float

    def __init__(self, request_id: str, new_tokens: int, context_tokens: int, arrival_time_s: float) -> None:
        # Adapters build one per request per iteration: the slots' own setters are ~2x cheaper than the
        # object.__setattr__ a frozen dataclass's generated __init__ uses. Still frozen, hashable, comparable.
        _set_request_id(self, request_id)
        _set_new_tokens(self, new_tokens)
        _set_context_tokens(self, context_tokens)
        _set_arrival_time_s(self, arrival_time_s)


_set_request_id, _set_new_tokens, _set_context_tokens, _set_arrival_time_s = (
    vars(ScheduledRequest)[name].__set__
    for name in ("request_id", "new_tokens", "context_tokens", "arrival_time_s")
)


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request waiting for its prefill: ``prompt_tokens`` still to compute."""

    request_id: str
    prompt_tokens: int
    arrival_time_s: float


@dataclass(frozen=True, slots=True, init=False)
class BatchSnapshot:
    """What one iteration of one instance is about to run, taken right before the forward.

    Invariants: ``num_new_tokens == sum(r.new_tokens)`` and ``num_context_tokens == sum(r.context_tokens)``
    over ``requests``; build it with :meth:`build` to keep them.
    """

    phase: Phase
    requests: tuple[ScheduledRequest, ...]
    waiting: tuple[QueuedRequest, ...]
    now_s: float
    num_new_tokens: int
    num_context_tokens: int
    iteration: int = 0
    instance_id: str = ""

    def __init__(
        self,
        phase: Phase,
        requests: tuple[ScheduledRequest, ...],
        waiting: tuple[QueuedRequest, ...],
        now_s: float,
        num_new_tokens: int,
        num_context_tokens: int,
        iteration: int = 0,
        instance_id: str = "",
    ) -> None:
        # One per iteration of every instance: slot setters, as in ScheduledRequest.
        _snapshot_set[0](self, phase)
        _snapshot_set[1](self, requests)
        _snapshot_set[2](self, waiting)
        _snapshot_set[3](self, now_s)
        _snapshot_set[4](self, num_new_tokens)
        _snapshot_set[5](self, num_context_tokens)
        _snapshot_set[6](self, iteration)
        _snapshot_set[7](self, instance_id)

    @property
    def batch_size(self) -> int:
        """Number of requests in the batch."""
        return len(self.requests)

    @property
    def is_idle(self) -> bool:
        """True when nothing runs and nothing waits."""
        return not self.requests and not self.waiting

    @classmethod
    def build(
        cls,
        phase: Phase,
        requests: Sequence[ScheduledRequest],
        now_s: float,
        waiting: Sequence[QueuedRequest] = (),
        iteration: int = 0,
        instance_id: str = "",
    ) -> BatchSnapshot:
        """Build a snapshot with its token aggregates computed from ``requests``."""
        reqs = tuple(requests)
        return cls(
            phase=phase,
            requests=reqs,
            waiting=tuple(waiting),
            now_s=now_s,
            num_new_tokens=sum([r.new_tokens for r in reqs]),  # lists: faster than generators here
            num_context_tokens=sum([r.context_tokens for r in reqs]),
            iteration=iteration,
            instance_id=instance_id,
        )


def slot_setters(cls: type, *names: str) -> tuple[Any, ...]:
    """The slots' own setters of a frozen slotted dataclass, for a hand-written ``__init__`` on the hot path
    (about half the cost of the ``object.__setattr__`` calls of the generated one; the instances stay frozen,
    hashable and comparable: tests/unit/foundation/test_scheduled_request_fast_init.py)."""
    return tuple(vars(cls)[name].__set__ for name in names)


_snapshot_set = slot_setters(
    BatchSnapshot,
    "phase",
    "requests",
    "waiting",
    "now_s",
    "num_new_tokens",
    "num_context_tokens",
    "iteration",
    "instance_id",
)


class DecisionReason(StrEnum):
    """Why a clock was chosen: which constraint bound the choice."""

    STATIC = "static"
    IDLE = "idle"
    ENERGY_OPTIMAL = "energy-optimal"
    SLO_BOUND = "slo-bound"
    QUEUE_BOUND = "queue-bound"
    INFEASIBLE = "infeasible"
    PREDICTOR_UNTRUSTED = "predictor-untrusted"
    HYSTERESIS = "hysteresis"
    NO_POLICY = "no-policy"
    MONITOR_ONLY = "monitor-only"
    PINNED = "pinned"
    """A client pinned the clock (``POST /voltana/clock``, e.g. ``voltana profile``); the policy waits."""
    POWER_CEILING = "power-ceiling"
    """The policy wanted more than the power-budget coordinator's ceiling; the clock is the ceiling."""


@dataclass(frozen=True, slots=True, init=False)
class ClockDecision:
    """A policy's choice of SM clock for one iteration, with the reason and its predictions."""

    clock_mhz: int
    reason: DecisionReason
    policy: str
    predicted_latency_s: float | None = None
    predicted_energy_j: float | None = None

    def __init__(
        self,
        clock_mhz: int,
        reason: DecisionReason,
        policy: str,
        predicted_latency_s: float | None = None,
        predicted_energy_j: float | None = None,
    ) -> None:
        _decision_set[0](self, clock_mhz)  # one per iteration: slot setters, as in ScheduledRequest
        _decision_set[1](self, reason)
        _decision_set[2](self, policy)
        _decision_set[3](self, predicted_latency_s)
        _decision_set[4](self, predicted_energy_j)


_decision_set = slot_setters(
    ClockDecision, "clock_mhz", "reason", "policy", "predicted_latency_s", "predicted_energy_j"
)


@dataclass(frozen=True, slots=True)
class InstanceState:
    """What the router sees of one engine instance.

    ``pending_prompt_tokens``: prompt tokens sent to a prefill instance and not yet prefilled (the router's
    own bookkeeping); ``capture_sizes``: the engine's CUDA-graph batch sizes (ascending) for decode.

    Decode admission (0 where unknown, which :meth:`can_admit` reads as unlimited): ``max_running`` is the
    engine's running-request cap (vLLM ``max_num_seqs``, SGLang ``max_running_requests``);
    ``num_admission_waiting`` the requests whose KV cache has arrived and that wait for a batch slot or KV
    space (part of ``num_waiting``, which also counts KV transfers in flight); ``kv_committed_tokens`` the KV
    tokens reserved by running requests (prompt + output budget) plus what every waiting and in-flight request
    will need.
    """

    instance_id: str
    phase: Phase
    url: str = ""
    num_running: int = 0
    num_waiting: int = 0
    kv_tokens: int = 0
    kv_capacity_tokens: int = 0
    sm_clock_mhz: int | None = None
    capture_sizes: tuple[int, ...] = ()
    healthy: bool = True
    updated_at_s: float = 0.0
    pending_prompt_tokens: int = 0
    max_running: int = 0
    num_admission_waiting: int = 0
    kv_committed_tokens: int = 0

    def can_admit(self, kv_tokens_needed: int) -> bool:
        """True when a request needing ``kv_tokens_needed`` KV tokens (prompt + output) would join the running
        batch at once: a batch slot is free after every request already waiting or in transfer, and its KV
        fits next to everything committed. Unknown limits (0) do not bind."""
        slots_ok = self.max_running <= 0 or self.num_running + self.num_waiting < self.max_running
        kv_ok = (
            self.kv_capacity_tokens <= 0
            or self.kv_committed_tokens + kv_tokens_needed <= self.kv_capacity_tokens
        )
        return slots_ok and kv_ok


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """A request to place on an instance: its prompt length and expected output length (tokens)."""

    request_id: str
    input_tokens: int
    max_output_tokens: int = 0
    arrival_time_s: float = 0.0


@dataclass(frozen=True, slots=True, init=False)
class IterationRecord:
    """One finished iteration: what ran, what was decided, and what was measured."""

    snapshot: BatchSnapshot
    decision: ClockDecision
    applied_clock_mhz: int
    start_time_s: float
    latency_s: float
    energy_j: float | None = None
    energy_source: EnergySource = EnergySource.SIMULATED
    """Where ``energy_j`` comes from; a measured iteration's energy is settled later (None here), see
    :mod:`voltana.core.energy_ledger`."""
    counter_energy_j: float | None = None
    """Instance energy the counter accounted since the previous record (J, idle included; settled off the
    hot path); None where not tracked. Instance energy counters add this, else ``energy_j``."""

    def __init__(
        self,
        snapshot: BatchSnapshot,
        decision: ClockDecision,
        applied_clock_mhz: int,
        start_time_s: float,
        latency_s: float,
        energy_j: float | None = None,
        energy_source: EnergySource = EnergySource.SIMULATED,
        counter_energy_j: float | None = None,
    ) -> None:
        _record_set[0](self, snapshot)  # one per iteration: slot setters, as in ScheduledRequest
        _record_set[1](self, decision)
        _record_set[2](self, applied_clock_mhz)
        _record_set[3](self, start_time_s)
        _record_set[4](self, latency_s)
        _record_set[5](self, energy_j)
        _record_set[6](self, energy_source)
        _record_set[7](self, counter_energy_j)


_record_set = slot_setters(
    IterationRecord,
    "snapshot",
    "decision",
    "applied_clock_mhz",
    "start_time_s",
    "latency_s",
    "energy_j",
    "energy_source",
    "counter_energy_j",
)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request on one instance (one phase of a P/D request), for telemetry."""

    request_id: str
    phase: Phase
    instance_id: str
    input_tokens: int
    output_tokens: int
    arrival_time_s: float
    first_token_time_s: float | None
    finish_time_s: float
    energy_j: float
    clock_residency_s: dict[int, float] = field(default_factory=dict)
    model: str = ""
    trace_headers: dict[str, str] = field(default_factory=dict)
    """W3C trace context (``traceparent``, ``tracestate``) of the request: joins its span to the trace."""
    energy_source: EnergySource = EnergySource.SIMULATED
    """Where ``energy_j`` comes from (``measured``, ``power-integrated``, ``simulated`` or ``unknown``)."""
