"""Discrete-event simulation of a P/D disaggregated deployment: N prefill + M decode instances.

Each instance runs continuous batching on a simulated GPU (``PerformanceModel.cost``) and asks its own
real ``FrequencyController`` (a :class:`voltana.core.protocols.Controller`) for the clock of every iteration
(``decide`` before, ``observe`` after), exactly as an engine adapter does in production. Requests are placed
by the routing policies ``RoutingSpec`` names, looked up once among the registered policies (an unknown name
raises ``UnknownPolicyError`` when the simulation is built).

Engine behaviour modelled (the parts that matter for clocks and energy):
- prefill: FIFO queue, iterations of at most ``prefill_token_budget`` prompt tokens (chunked prefill: the
  head request may be split across iterations); the first token is emitted when a request's prefill ends;
- KV transfer P -> D: ``kv_transfer_fixed_s + tokens * kv_bytes_per_token / kv_bandwidth_bytes_per_s``;
- decode: admission FIFO while the KV cache can hold prompt + full output (no preemption) and the batch
  has fewer than the engine's running-request cap (:mod:`voltana.sim.engine`: vLLM ``max_num_seqs``, SGLang
  ``max_running_requests``); each iteration emits one token per request and costs what the performance
  model says for the batch padded up to the next CUDA-graph capture size. The wait between a request's KV
  arriving and its admission is recorded per request (``decode_ready_s`` .. ``decode_admit_s``);
- requests the engine refuses (longer than ``max_model_len``, or needing more KV than a decode instance
  has) are rejected at arrival, as vLLM's HTTP 400 and SGLang's length check do: no prefill, no energy,
  counted in ``ClusterOutcome``;
- energy: the sum of iteration energies plus idle power for the time an instance has no iteration running,
  over the span from the first arrival to the last completion (the same for every instance of a run).
Clock switches are applied instantly (the applier works off the hot path and a switch takes milliseconds).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from voltana.core.contexts import RouteContext
from voltana.core.policies import route_policy
from voltana.core.protocols import Controller
from voltana.core.types import (
    DEFAULT_PREFILL_TOKEN_BUDGET,
    BatchSnapshot,
    InstanceState,
    IterationRecord,
    Phase,
    QueuedRequest,
    RouteRequest,
    ScheduledRequest,
    Slo,
)
from voltana.sim.engine import DEFAULT_ENGINE, EngineLimits, admit_decode, compose_prefill, engine_limits
from voltana.sim.workload import Workload

DEFAULT_KV_BANDWIDTH_BYTES_PER_S = 25e9
"""One 200 Gb/s RDMA NIC per instance (typical for NIXL/Mooncake P/D transfer), an assumption."""
DEFAULT_KV_TRANSFER_FIXED_S = 0.002
"""Per-request handshake + scheduling overhead of a KV transfer (s), an assumption."""


ControllerFactory = Callable[[Phase, str], Controller]


@dataclass(frozen=True)
class ClusterSpec:
    """The deployment: ``model`` is a ``voltana.hardware.simulated.PerformanceModel`` (one per instance)."""

    model: Any
    num_prefill: int = 2
    num_decode: int = 2
    prefill_token_budget: int = DEFAULT_PREFILL_TOKEN_BUDGET
    max_decode_batch: int | None = None
    """Running-request cap per decode instance; None: the engine's default for the GPU and model."""
    kv_bytes_per_token: int = 131072
    kv_bandwidth_bytes_per_s: float = DEFAULT_KV_BANDWIDTH_BYTES_PER_S
    kv_transfer_fixed_s: float = DEFAULT_KV_TRANSFER_FIXED_S
    kv_capacity_tokens: int | None = None
    """Decode KV-cache capacity per instance (tokens); None: the performance model's."""
    engine: str = DEFAULT_ENGINE
    """The engine whose defaults apply: ``vllm`` or ``sglang`` (see :mod:`voltana.sim.engine`)."""
    max_model_len: int | None = None
    """Longest request (prompt + output tokens) the engine accepts; None: the model's context length."""

    def __post_init__(self) -> None:
        if self.num_prefill < 1 or self.num_decode < 1:
            raise ValueError("a P/D cluster needs at least one prefill and one decode instance")

    def limits(self) -> EngineLimits:
        """The decode engine's resolved limits (raises ``EngineConfigError`` for a bad setting)."""
        return engine_limits(
            self.engine, self.model, self.max_decode_batch, self.max_model_len, self.kv_capacity_tokens
        )

    def kv_transfer_s(self, tokens: int) -> float:
        """Time to move ``tokens`` tokens of KV cache from a prefill to a decode instance (s)."""
        return self.kv_transfer_fixed_s + tokens * self.kv_bytes_per_token / self.kv_bandwidth_bytes_per_s


@dataclass(frozen=True)
class RoutingSpec:
    """Routing policy names (registered ``route`` policies) and their options (shared, then per phase)."""

    prefill: str = "predicted-ttft"
    decode: str = "ecoroute"
    options: dict[str, Any] = field(default_factory=dict)
    prefill_options: dict[str, Any] = field(default_factory=dict)
    decode_options: dict[str, Any] = field(default_factory=dict)


class SimRequest:
    """One request's life in the simulation (mutable; times in s from the first arrival)."""

    __slots__ = (
        "arrival_s",
        "context_tokens",
        "decode_admit_s",
        "decode_ready_s",
        "finish_s",
        "first_token_s",
        "generated",
        "input_tokens",
        "output_tokens",
        "prefilled",
        "queued",
        "request_id",
    )

    def __init__(self, request_id: str, arrival_s: float, input_tokens: int, output_tokens: int) -> None:
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.prefilled = 0
        self.generated = 0
        self.context_tokens = 0
        self.first_token_s = -1.0
        self.finish_s = -1.0
        self.decode_ready_s = -1.0  # its KV cache arrived at a decode instance
        self.decode_admit_s = -1.0  # it joined that instance's running batch
        self.queued = QueuedRequest(request_id, input_tokens, arrival_s)

    @property
    def admission_wait_s(self) -> float:
        """Wait between the KV cache's arrival at decode and admission to the batch (s); 0 without decode."""
        return self.decode_admit_s - self.decode_ready_s if self.decode_admit_s >= 0.0 else 0.0


@dataclass
class InstanceStats:
    """Per-instance accounting: busy time and energy, iterations, busy seconds per set clock (MHz)."""

    instance_id: str
    phase: Phase
    busy_s: float = 0.0
    busy_energy_j: float = 0.0
    iterations: int = 0
    clock_busy_s: dict[int, float] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)


class _RequestQueue:
    """FIFO of requests that keeps their ``QueuedRequest`` entries side by side, so the ``waiting`` tuple of a
    snapshot is one list slice instead of a Python loop over the queue (long queues under overload)."""

    __slots__ = ("_head", "_items", "_queued")

    def __init__(self) -> None:
        self._items: list[SimRequest] = []
        self._queued: list[QueuedRequest] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __bool__(self) -> bool:
        return len(self._items) > self._head

    def __getitem__(self, index: int) -> SimRequest:
        if index != 0 or not self:
            raise IndexError("only the head of a request queue is addressable")
        return self._items[self._head]

    def __iter__(self) -> Iterator[SimRequest]:
        # Lazy from the head: the consumers (compose_prefill, admit_decode) stop at the first misfit.
        return map(self._items.__getitem__, range(self._head, len(self._items)))

    def append(self, request: SimRequest) -> None:
        self._items.append(request)
        self._queued.append(request.queued)

    def popleft(self) -> SimRequest:
        head = self._head
        request = self._items[head]
        head += 1
        if head >= 1024 and 2 * head >= len(self._items):  # drop the consumed prefix now and then
            del self._items[:head], self._queued[:head]
            head = 0
        self._head = head
        return request

    def requeue_head(self, request: SimRequest) -> None:
        """The head's ``queued`` entry changed (a chunk of its prompt was computed)."""
        assert self._items[self._head] is request
        self._queued[self._head] = request.queued

    def queued(self) -> tuple[QueuedRequest, ...]:
        """The waiting requests' entries, in queue order."""
        return tuple(self._queued[self._head :])


class _Instance:
    __slots__ = ("busy", "clock_mhz", "controller", "iteration", "stats")

    def __init__(self, instance_id: str, phase: Phase, controller: Controller, clock_mhz: int) -> None:
        self.controller = controller
        self.stats = InstanceStats(instance_id, phase)
        self.busy = False
        self.iteration = 0
        self.clock_mhz = clock_mhz


class _PrefillInstance(_Instance):
    __slots__ = ("batch", "pending_tokens", "waiting")

    def __init__(self, instance_id: str, controller: Controller, clock_mhz: int) -> None:
        super().__init__(instance_id, Phase.PREFILL, controller, clock_mhz)
        self.waiting = _RequestQueue()
        self.pending_tokens = 0
        self.batch: list[tuple[SimRequest, int]] = []


class _DecodeInstance(_Instance):
    __slots__ = (
        "admit",
        "admit_tokens",
        "in_transfer",
        "in_transfer_tokens",
        "kv_pending",
        "kv_reserved",
        "kv_sum",
        "running",
    )

    def __init__(self, instance_id: str, controller: Controller, clock_mhz: int) -> None:
        super().__init__(instance_id, Phase.DECODE, controller, clock_mhz)
        self.admit = _RequestQueue()
        self.running: list[SimRequest] = []
        self.in_transfer = 0
        self.in_transfer_tokens = 0
        self.admit_tokens = 0  # KV tokens (prompts) of the admission queue
        self.kv_pending = 0  # prompt + output of every request in transfer or waiting for admission
        self.kv_reserved = 0  # prompt + output of the running requests
        self.kv_sum = 0


@dataclass
class ClusterOutcome:
    """What one simulation produced: the requests (with times) and instance stats."""

    requests: list[SimRequest]
    instances: list[InstanceStats]
    span_s: float
    idle_power_w: float
    rejected_over_context: list[SimRequest] = field(default_factory=list)
    """Refused at arrival: prompt + output over the engine's ``max_model_len`` (not in ``requests``)."""
    rejected_over_kv: list[SimRequest] = field(default_factory=list)
    """Refused at arrival: prompt + output more than a decode instance's whole KV cache (never admitted)."""
    limits: EngineLimits | None = None


_PREFILL_DONE = 0
_DECODE_DONE = 1
_DECODE_ARRIVE = 2


class ClusterSimulation:
    """One run of one workload on one cluster under one set of controllers and routing policies."""

    def __init__(
        self,
        workload: Workload,
        cluster: ClusterSpec,
        controller_factory: ControllerFactory,
        hook: Any,
        slo: Slo,
        routing: RoutingSpec,
        seed: int = 0,
        record_timeline: bool = False,
        route_predictors: dict[str, Any] | None = None,
        route_power_models: dict[str, Any] | None = None,
    ) -> None:
        self.workload = workload
        self.cluster = cluster
        self.model = cluster.model
        self.hook = hook
        self.route_policies = {  # looked up once: an unknown name fails here, before any request runs
            Phase.PREFILL: route_policy(hook, routing.prefill),
            Phase.DECODE: route_policy(hook, routing.decode),
        }
        self.record_timeline = record_timeline
        supported_top = int(cluster.model.supported_clocks_mhz[-1])

        def top_clock(controller: Controller) -> int:
            # Until its first iteration an instance sits at its highest allowed clock (the driver default).
            return int(getattr(controller, "allowed_clocks_mhz", (supported_top,))[-1])

        self.prefill = []
        for i in range(cluster.num_prefill):
            controller = controller_factory(Phase.PREFILL, f"prefill-{i}")
            self.prefill.append(_PrefillInstance(f"prefill-{i}", controller, top_clock(controller)))
        self.decode = []
        for i in range(cluster.num_decode):
            controller = controller_factory(Phase.DECODE, f"decode-{i}")
            self.decode.append(_DecodeInstance(f"decode-{i}", controller, top_clock(controller)))
        self.by_id: dict[str, _Instance] = {i.stats.instance_id: i for i in (*self.prefill, *self.decode)}
        options = {
            "prefill_token_budget": cluster.prefill_token_budget,
            "idle_power_w": float(cluster.model.idle_power_w()),
            **routing.options,
        }
        self.prefill_route = RouteContext(
            routing.prefill,
            Phase.PREFILL,
            slo,
            random.Random(seed),
            route_predictors,
            {**options, **routing.prefill_options},
            power_model=route_power_models,
        )
        self.decode_route = RouteContext(
            routing.decode,
            Phase.DECODE,
            slo,
            random.Random(seed + 1),
            route_predictors,
            {**options, **routing.decode_options},
            power_model=route_power_models,
        )
        self.capture_sizes = tuple(cluster.model.capture_sizes)
        self.limits = cluster.limits()
        self.kv_capacity = self.limits.kv_capacity_tokens
        self.max_running = self.limits.max_running
        self.events: list[tuple[float, int, int, Any, Any]] = []
        self.seq = 0
        self.now_s = 0.0
        self.requests: list[SimRequest] = []
        self.rejected_over_context: list[SimRequest] = []
        self.rejected_over_kv: list[SimRequest] = []
        limits = self.limits
        for i, (t, n_in, n_out) in enumerate(
            zip(
                workload.arrival_s.tolist(),
                workload.input_tokens.tolist(),
                workload.output_tokens.tolist(),
                strict=True,
            )
        ):
            request = SimRequest(f"r{i}", t, n_in, n_out)
            if limits.over_context(n_in, n_out):
                self.rejected_over_context.append(request)
            elif limits.over_kv(n_in, n_out):
                self.rejected_over_kv.append(request)
            else:
                self.requests.append(request)

    # --- events -------------------------------------------------------------------------------------------
    def _push(self, time_s: float, kind: int, a: Any, b: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (time_s, self.seq, kind, a, b))

    def run(self, progress: Callable[[float], None] | None = None) -> ClusterOutcome:
        """Simulate until every request has finished; ``progress`` gets the share of arrivals processed."""
        requests = self.requests
        n = len(requests)
        events = self.events
        next_arrival = 0
        report_every = max(1, n // 100)
        while next_arrival < n or events:
            if next_arrival < n and (not events or requests[next_arrival].arrival_s <= events[0][0]):
                request = requests[next_arrival]
                next_arrival += 1
                self.now_s = request.arrival_s
                self._route_prefill(request)
                if progress is not None and next_arrival % report_every == 0:
                    progress(next_arrival / n)
                continue
            time_s, _, kind, a, b = heapq.heappop(events)
            self.now_s = time_s
            if kind == _DECODE_DONE:
                self._decode_done(a, b)
            elif kind == _PREFILL_DONE:
                self._prefill_done(a, b)
            else:
                self._decode_arrive(a, b)
        if progress is not None:
            progress(1.0)
        span_s = max((r.finish_s for r in requests), default=0.0)
        return ClusterOutcome(
            requests=requests,
            instances=[i.stats for i in (*self.prefill, *self.decode)],
            span_s=span_s,
            idle_power_w=float(self.model.idle_power_w()),
            rejected_over_context=self.rejected_over_context,
            rejected_over_kv=self.rejected_over_kv,
            limits=self.limits,
        )

    # --- routing ------------------------------------------------------------------------------------------
    def _state(self, inst: _Instance) -> InstanceState:
        if isinstance(inst, _PrefillInstance):
            return InstanceState(
                inst.stats.instance_id,
                Phase.PREFILL,
                num_running=len(inst.batch),
                num_waiting=len(inst.waiting),
                sm_clock_mhz=inst.clock_mhz,
                pending_prompt_tokens=inst.pending_tokens,
            )
        assert isinstance(inst, _DecodeInstance)
        # What an engine reports: KV in use or being received (not future growth) and the cache size.
        return InstanceState(
            inst.stats.instance_id,
            Phase.DECODE,
            num_running=len(inst.running),
            num_waiting=len(inst.admit) + inst.in_transfer,
            kv_tokens=inst.kv_sum + inst.in_transfer_tokens + inst.admit_tokens,
            kv_capacity_tokens=self.kv_capacity,
            sm_clock_mhz=inst.clock_mhz,
            capture_sizes=self.capture_sizes,
            max_running=self.max_running,
            num_admission_waiting=len(inst.admit),
            kv_committed_tokens=inst.kv_reserved + inst.kv_pending,
        )

    def _choose(self, request: SimRequest, instances: Sequence[_Instance], ctx: RouteContext) -> _Instance:
        if len(instances) == 1:
            return instances[0]
        route = RouteRequest(request.request_id, request.input_tokens, 0, request.arrival_s)
        chosen = self.route_policies[ctx.phase](route, [self._state(i) for i in instances], ctx)
        if chosen is None:
            raise ValueError(f"the {ctx.phase} routing policy {ctx.policy!r} chose no instance")
        return self.by_id[chosen]

    def _route_prefill(self, request: SimRequest) -> None:
        inst = self._choose(request, self.prefill, self.prefill_route)
        assert isinstance(inst, _PrefillInstance)
        inst.waiting.append(request)
        inst.pending_tokens += request.input_tokens
        if not inst.busy:
            self._start_prefill(inst)

    # --- prefill ------------------------------------------------------------------------------------------
    def _start_prefill(self, inst: _PrefillInstance) -> None:
        budget = self.cluster.prefill_token_budget
        waiting = inst.waiting
        batch: list[tuple[SimRequest, int]] = []
        scheduled: list[ScheduledRequest] = []
        new_tokens = 0
        context_tokens = 0
        for chunk in compose_prefill((r.input_tokens - r.prefilled for r in waiting), budget):
            request = waiting[0]
            scheduled.append(
                ScheduledRequest(request.request_id, chunk, request.prefilled, request.arrival_s)
            )
            batch.append((request, chunk))
            new_tokens += chunk
            context_tokens += request.prefilled
            if request.prefilled + chunk == request.input_tokens:
                waiting.popleft()
        still_waiting = waiting.queued()
        inst.iteration += 1
        snapshot = BatchSnapshot(
            Phase.PREFILL,
            tuple(scheduled),
            still_waiting,
            self.now_s,
            new_tokens,
            context_tokens,
            inst.iteration,
            inst.stats.instance_id,
        )
        inst.batch = batch
        self._run_iteration(inst, snapshot, len(scheduled), new_tokens, context_tokens, _PREFILL_DONE)

    def _run_iteration(
        self,
        inst: _Instance,
        snapshot: BatchSnapshot,
        batch_size: int,
        new_tokens: int,
        context_tokens: int,
        done_kind: int,
    ) -> None:
        decision = inst.controller.decide(snapshot)
        clock = decision.clock_mhz
        cost = self.model.cost(snapshot.phase, batch_size, new_tokens, context_tokens, clock)
        latency_s = cost.latency_s
        stats = inst.stats
        stats.busy_s += latency_s
        stats.busy_energy_j += cost.energy_j
        stats.iterations += 1
        residency = stats.clock_busy_s
        residency[clock] = residency.get(clock, 0.0) + latency_s
        if self.record_timeline and (not stats.timeline or stats.timeline[-1][1] != clock):
            stats.timeline.append((self.now_s, clock))  # clock changes only
        inst.clock_mhz = clock
        inst.busy = True
        record = IterationRecord(snapshot, decision, clock, self.now_s, latency_s, cost.energy_j)
        self._push(self.now_s + latency_s, done_kind, inst, record)

    def _prefill_done(self, inst: _PrefillInstance, record: IterationRecord) -> None:
        inst.busy = False
        inst.controller.observe(record)
        now_s = self.now_s
        for request, chunk in inst.batch:
            request.prefilled += chunk
            inst.pending_tokens -= chunk
            if request.prefilled == request.input_tokens:
                self._prefill_finished(request, now_s)
            else:
                request.queued = QueuedRequest(
                    request.request_id, request.input_tokens - request.prefilled, request.arrival_s
                )
                inst.waiting.requeue_head(request)
        inst.batch = []
        if inst.waiting:
            self._start_prefill(inst)

    def _prefill_finished(self, request: SimRequest, now_s: float) -> None:
        request.first_token_s = now_s
        request.generated = 1
        if request.output_tokens <= 1:
            request.finish_s = now_s
            return
        request.context_tokens = request.input_tokens
        # In a decode admission queue a request shows its whole prompt (its KV cache), not its last chunk.
        request.queued = QueuedRequest(request.request_id, request.input_tokens, request.arrival_s)
        inst = self._choose(request, self.decode, self.decode_route)
        assert isinstance(inst, _DecodeInstance)
        inst.in_transfer += 1
        inst.in_transfer_tokens += request.context_tokens
        inst.kv_pending += request.input_tokens + request.output_tokens
        self._push(now_s + self.cluster.kv_transfer_s(request.input_tokens), _DECODE_ARRIVE, inst, request)

    # --- decode -------------------------------------------------------------------------------------------
    def _decode_arrive(self, inst: _DecodeInstance, request: SimRequest) -> None:
        inst.in_transfer -= 1
        inst.in_transfer_tokens -= request.context_tokens
        request.decode_ready_s = self.now_s
        inst.admit.append(request)
        inst.admit_tokens += request.context_tokens
        if not inst.busy:
            self._start_decode(inst)

    def _admit(self, inst: _DecodeInstance) -> None:
        admit = inst.admit
        running = inst.running
        now_s = self.now_s
        # The KV check never fails for an empty batch: requests over a whole instance's KV are rejected.
        count = admit_decode(
            (r.input_tokens + r.output_tokens for r in admit),
            len(running),
            inst.kv_reserved,
            self.kv_capacity,
            self.max_running,
        )
        for _ in range(count):
            request = admit.popleft()
            need = request.input_tokens + request.output_tokens
            inst.admit_tokens -= request.context_tokens
            inst.kv_pending -= need
            inst.kv_reserved += need
            inst.kv_sum += request.context_tokens
            request.decode_admit_s = now_s
            running.append(request)

    def _start_decode(self, inst: _DecodeInstance) -> None:
        admit = inst.admit
        waiting: tuple[QueuedRequest, ...] = ()
        if admit:  # (usually empty: then the snapshot's waiting tuple is too, with no second look)
            self._admit(inst)
            if admit:
                waiting = admit.queued()
        running = inst.running
        if not running:
            return
        batch_size = len(running)
        scheduled = tuple([ScheduledRequest(r.request_id, 1, r.context_tokens, r.arrival_s) for r in running])
        inst.iteration += 1
        kv_tokens = inst.kv_sum
        snapshot = BatchSnapshot(
            Phase.DECODE,
            scheduled,
            waiting,
            self.now_s,
            batch_size,
            kv_tokens,
            inst.iteration,
            inst.stats.instance_id,
        )
        # The performance model pads the batch to the next CUDA-graph capture size itself.
        self._run_iteration(inst, snapshot, batch_size, batch_size, kv_tokens, _DECODE_DONE)

    def _decode_done(self, inst: _DecodeInstance, record: IterationRecord) -> None:
        inst.busy = False
        inst.controller.observe(record)
        now_s = self.now_s
        running = inst.running
        finished = False
        for request in running:
            request.generated += 1
            request.context_tokens += 1
            if request.generated >= request.output_tokens:
                request.finish_s = now_s
                finished = True
        inst.kv_sum += len(running)
        if finished:
            keep = []
            for request in running:
                if request.finish_s >= 0.0:
                    inst.kv_reserved -= request.input_tokens + request.output_tokens
                    inst.kv_sum -= request.context_tokens
                else:
                    keep.append(request)
            inst.running = keep
        if inst.running or inst.admit:
            self._start_decode(inst)
