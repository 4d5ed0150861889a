"""An engine emulator: a small server speaking vLLM's or SGLang's HTTP and P/D protocols, timed by the
simulated GPU, cheap enough to run 20 instances on 2 cores (all on one event loop).

It is a test double for the router, so it checks the protocol like the real engines do: a vLLM decode
instance only skips its prefill when the ``kv_transfer_params`` it gets were issued by a prefill instance for
the same prompt (else it counts a miss and prefills locally); an SGLang decode instance waits for the KV of
``bootstrap_room`` published by the prefill instance at ``bootstrap_host:bootstrap_port`` and fails when it
does not come or belongs to another prompt. The shared-storage connector case: prefill stores the prompt's KV,
decode finds it (an "external cache hit") without any parameter exchanged.

Engine model: continuous batching. Each iteration is a prefill batch (the waiting queue, up to a token budget)
or one decode step of every running request; it lasts ``PerformanceModel.cost(...).latency_s x time_scale
x slowdown``. Output text is a pure function of the prompt (so an answer can be checked anywhere); prompt
tokens are estimated as characters / 4.

Energy: each iteration's simulated energy is split over its batch with voltana's attribution rule
(:func:`voltana.core.attribution.energy_shares`); a finished request's joules are served at
``GET /voltana/requests/{X-Request-Id}`` (the per-request record the router's ``report_energy`` reads).
Like vLLM, ``echo: true`` puts the prompt in front of the text, and ``max_tokens: 0`` with ``echo`` scores the
prompt without generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from voltana.core.attribution import energy_shares
from voltana.core.config import ClockConfig
from voltana.core.types import Phase, ScheduledRequest
from voltana.hardware.simulated import PerformanceModel, performance_model
from voltana.plugins.ecofreq_seed import resolve_allowed_clocks
from voltana.profiler.ceiling_api import MemoryCeiling, add_ceiling_routes, clock_under
from voltana.profiler.engine_api import MemoryControl, add_control_routes, iteration_json
from voltana.router.disconnect import ClientGone, until_disconnect
from voltana.router.request_ids import NOT_YET, RECORD_ROUTE, id_from_path
from voltana.router.serving import EmbeddedServer, bind_socket, start_server, stop_server

Protocol = Literal["vllm", "sglang"]
Role = Literal["prefill", "decode", "mixed"]
Connector = Literal["nixl", "shared-storage"]
_VOCABULARY = (
    "the of and to in is was for on that with as by at from his her an which have are not be this one"
)
WORDS = tuple(_VOCABULARY.split(" "))
DEFAULT_MAX_TOKENS = 16
PREFILL_TOKEN_BUDGET = 8192  # vLLM's default max_num_batched_tokens with chunked prefill
KV_BLOCK_TOKENS = 16
MIN_SLEEP_S = 0.002
ENERGY_RECORDS_KEPT = 10_000


def prompt_key(body: dict[str, Any]) -> str:
    """The identity of a request's prompt (completions ``prompt`` or chat ``messages``)."""
    if "messages" in body:
        return json.dumps(body["messages"], sort_keys=True)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens: token ids counted, text estimated at 4 characters per token."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return max(1, len(prompt_key(body)) // 4)


def token_text(key: str, index: int) -> str:
    """The ``index``-th output token for prompt ``key`` (deterministic)."""
    h = zlib.crc32(key.encode())
    return " " + WORDS[(h + 7 * index + 31 * index * index) % len(WORDS)]


def expected_text(key: str, num_tokens: int) -> str:
    """The whole output an emulated engine gives for ``key`` after ``num_tokens`` tokens."""
    return "".join(token_text(key, i) for i in range(num_tokens))


def _is_prompt_batch(prompt: Any) -> bool:
    """True for a completions ``prompt`` that is several prompts (texts or token-id lists)."""
    if not isinstance(prompt, list) or len(prompt) < 2:
        return False
    return all(isinstance(p, str) for p in prompt) or all(
        isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt
    )


def completion_object(
    request_id: str, model: str, chat: bool, text: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The OpenAI (chat) completion object of a finished request (``finish_reason`` "length")."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": f"cmpl-{request_id}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@dataclass
class KvBus:
    """The in-process stand-in for the KV-transfer fabric between emulated instances."""

    transfers: dict[str, str] = field(default_factory=dict)  # vLLM NIXL: transfer key -> prompt key
    storage: set[str] = field(default_factory=set)  # vLLM shared-storage connector: stored prompt keys
    rooms: dict[tuple[str, int, int], asyncio.Future[str]] = field(default_factory=dict)  # SGLang

    def room(self, host: str, port: int, room: int) -> asyncio.Future[str]:
        """The future that the prefill of ``room`` at ``host:port`` resolves with its prompt key."""
        key = (host, port, room)
        if key not in self.rooms:
            self.rooms[key] = asyncio.get_running_loop().create_future()
        return self.rooms[key]


@dataclass
class EmuRequest:
    """One request inside an emulated engine."""

    request_id: str
    key: str
    prompt_tokens: int
    max_tokens: int
    needs_prefill: bool
    generated: int = 0
    tokens: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    finished: bool = False
    aborted: bool = False
    energy_j: float = 0.0


@dataclass
class Faults:
    """Injected faults: ``slowdown`` multiplies iteration time; ``error_status`` answers every generation;
    ``poison_prompt``: a request with this prompt makes the engine fail (HTTP 500) and stay dead, as a
    request that crashes vLLM's EngineCore does; ``poll_delay_s`` stalls the monitoring endpoints
    (``/metrics``, ``/v1/loads``, ``/v1/models``, ``/health``, ``/voltana/state``), as a busy engine does."""

    slowdown: float = 1.0
    error_status: int | None = None
    poison_prompt: str | None = None
    poll_delay_s: float = 0.0


class EmulatedEngine:
    """Continuous batching over simulated iteration times."""

    def __init__(
        self,
        model: PerformanceModel,
        clock_mhz: int,
        time_scale: float,
        faults: Faults,
        control: MemoryControl | None = None,
        ceiling: MemoryCeiling | None = None,
    ) -> None:
        self.model = model
        self.clock_mhz = clock_mhz
        self.control = control
        self.ceiling = ceiling
        self.busy_energy_j = 0.0  # simulated joules of every iteration run
        self.busy_sim_s = 0.0  # simulated seconds of those iterations
        self.started_at_s = time.monotonic()
        self.time_scale = time_scale
        self.faults = faults
        self.waiting: deque[EmuRequest] = deque()
        self.running: list[EmuRequest] = []
        self.iterations = 0
        self.busy_s = 0.0
        self._debt_s = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the scheduler loop."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop; every unfinished request ends (its stream closes)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for req in list(self.waiting) + self.running:
            self.abort(req)

    def submit(self, req: EmuRequest) -> None:
        """Queue ``req`` for prefill, or straight into the decode batch when its KV is already here."""
        (self.waiting.append if req.needs_prefill else self.running.append)(req)
        self._wake.set()

    def abort(self, req: EmuRequest) -> None:
        """Drop ``req`` (client gone or engine stopping)."""
        if req.finished:
            return
        req.aborted = req.finished = True
        with contextlib.suppress(ValueError):
            self.waiting.remove(req)
        with contextlib.suppress(ValueError):
            self.running.remove(req)
        req.tokens.put_nowait(None)

    @property
    def kv_tokens(self) -> int:
        """KV tokens held by running requests."""
        return sum(r.prompt_tokens + r.generated for r in self.running)

    def _emit(self, req: EmuRequest) -> None:
        req.tokens.put_nowait(token_text(req.key, req.generated))
        req.generated += 1
        if req.generated >= req.max_tokens:
            req.finished = True
            req.tokens.put_nowait(None)

    async def _run_for(self, latency_s: float) -> None:
        """Let ``latency_s`` of simulated time pass (scaled). Sub-millisecond waits are batched: the event
        loop cannot time them (epoll has 1 ms resolution) and one wake-up per iteration would dominate, so
        the engine yields and keeps a time debt that it sleeps off once it reaches ``MIN_SLEEP_S``."""
        delay_s = latency_s * self.time_scale * self.faults.slowdown
        self.busy_s += delay_s
        self.iterations += 1
        self._debt_s += delay_s
        if self._debt_s < MIN_SLEEP_S:
            await asyncio.sleep(0)
            return
        start = time.monotonic()
        await asyncio.sleep(self._debt_s)
        self._debt_s = max(-MIN_SLEEP_S, self._debt_s - (time.monotonic() - start))

    def _cost(self, phase: Phase, batch_size: int, new_tokens: int, context_tokens: int) -> Any:
        """The simulated GPU's cost of one iteration at the current clock (the pinned one, if pinned),
        recorded for ``GET /voltana/iterations``."""
        pinned = False
        if self.control is not None:
            self.clock_mhz, pinned = self.control.clock_mhz()
            ceiling = self.ceiling.ceiling_mhz() if self.ceiling is not None else None
            if ceiling is not None and not pinned:
                self.clock_mhz = clock_under(self.control.allowed_clocks_mhz(), self.clock_mhz, ceiling)
        cost = self.model.cost(phase, batch_size, new_tokens, context_tokens, self.clock_mhz)
        self.busy_energy_j += cost.energy_j
        self.busy_sim_s += cost.latency_s
        if self.control is not None:
            self.control.ring.append(
                iteration_json(
                    seq=0,
                    t_s=time.time(),
                    phase=phase.value,
                    batch_size=batch_size,
                    new_tokens=new_tokens,
                    context_tokens=context_tokens,
                    clock_mhz=self.clock_mhz,
                    decided_mhz=self.clock_mhz,
                    reason="pinned" if pinned else "static",
                    latency_s=cost.latency_s,
                    energy_j=cost.energy_j,
                )
            )
        return cost

    def energy_joules(self) -> float:
        """Energy drawn since start at wall-clock pace (J): the simulated GPU's iterations plus its idle power
        in between, times ``time_scale``, so that joules per wall second are the simulated watts. With
        ``time_scale`` 0 (no waiting) wall time means nothing: the iterations' simulated joules alone."""
        if self.time_scale <= 0.0:
            return self.busy_energy_j
        elapsed_sim_s = (time.monotonic() - self.started_at_s) / self.time_scale
        idle_s = max(0.0, elapsed_sim_s - self.busy_sim_s)
        return (self.busy_energy_j + self.model.idle_power_w() * idle_s) * self.time_scale

    @staticmethod
    def _attribute(batch: list[EmuRequest], energy_j: float, prefill: bool) -> None:
        """Add each request's share of one iteration's simulated energy (voltana's attribution rule)."""
        scheduled = [
            ScheduledRequest(r.request_id, r.prompt_tokens, 0, 0.0)
            if prefill
            else ScheduledRequest(r.request_id, 1, r.prompt_tokens + r.generated, 0.0)
            for r in batch
        ]
        for req, share_j in zip(batch, energy_shares(scheduled, energy_j), strict=True):
            req.energy_j += share_j

    def iteration_latency_s(self, phase: Phase, batch: list[EmuRequest]) -> float:
        """Simulated duration of one iteration of ``batch`` (s, before ``time_scale``) at the current clock
        (the pinned one, if pinned); each request of ``batch`` gets its share of the iteration's energy.

        A prefill computes every prompt token of ``batch``; a decode step one token per request over its
        context. Subclasses choose the clock here (see ``voltana.integrations.ray_serve.engine``).
        """
        if phase is Phase.PREFILL:
            tokens = sum(r.prompt_tokens for r in batch)
            cost = self._cost(Phase.PREFILL, len(batch), tokens, 0)
        else:
            context = sum(r.prompt_tokens + r.generated for r in batch)
            cost = self._cost(Phase.DECODE, len(batch), len(batch), context)
        self._attribute(batch, cost.energy_j, prefill=phase is Phase.PREFILL)
        return float(cost.latency_s)

    def iteration_done(self) -> None:
        """Called when the iteration timed by :meth:`iteration_latency_s` has run (before tokens go out)."""

    async def _loop(self) -> None:
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
            if self.waiting:
                batch: list[EmuRequest] = []
                tokens = 0
                while self.waiting and (
                    not batch or tokens + self.waiting[0].prompt_tokens <= PREFILL_TOKEN_BUDGET
                ):
                    req = self.waiting.popleft()
                    batch.append(req)
                    tokens += req.prompt_tokens
                await self._run_for(self.iteration_latency_s(Phase.PREFILL, batch))
                self.iteration_done()
                for req in batch:
                    if not req.aborted:
                        self._emit(req)  # the prefill samples the first token
                        if not req.finished:
                            self.running.append(req)
                continue
            batch = list(self.running)
            await self._run_for(self.iteration_latency_s(Phase.DECODE, batch))
            self.iteration_done()
            for req in batch:
                if not req.aborted:
                    self._emit(req)
            self.running = [r for r in self.running if not r.finished]


@dataclass
class InstanceStats:
    """What an emulated instance saw (for tests and ``GET /emulator/stats``)."""

    completed: int = 0
    aborted: int = 0
    errors: int = 0
    remote_prefill_hits: int = 0
    external_cache_hits: int = 0
    kv_misses: int = 0
    local_prefills: int = 0
    served_ids: Counter[str] = field(default_factory=Counter)
    traceparents: deque[str] = field(default_factory=lambda: deque(maxlen=256))
    energy_j: dict[str, float] = field(default_factory=dict)
    """Joules of each finished request by its X-Request-Id (the newest ``ENERGY_RECORDS_KEPT``)."""


def _default_allowed_clocks(model: PerformanceModel) -> tuple[int, ...]:
    """The clocks an instance lets a client pin when none are given: what an engine would allow by
    default (``clocks`` config unset)."""
    return resolve_allowed_clocks(ClockConfig(), model.supported_clocks_mhz)


class EmulatedInstance:
    """One emulated vLLM or SGLang server (prefill, decode or mixed role)."""

    _engine_ids = itertools.count()

    def __init__(
        self,
        *,
        protocol: Protocol,
        role: Role,
        bus: KvBus,
        model: PerformanceModel,
        model_name: str = "emulated-model",
        time_scale: float = 1.0,
        connector: Connector = "nixl",
        host: str = "127.0.0.1",
        bootstrap_port: int | None = None,
        max_model_len: int = 8192,
        bootstrap_timeout_s: float = 10.0,
        clock_mhz: int | None = None,
        clock_token: str | None = None,
        allowed_clocks_mhz: tuple[int, ...] = (),
    ) -> None:
        self.protocol = protocol
        self.role = role
        self.bus = bus
        self.model = model
        self.model_name = model_name
        self.connector = connector
        self.host = host
        self.port = 0
        self.bootstrap_port = bootstrap_port
        self.max_model_len = max_model_len
        self.bootstrap_timeout_s = bootstrap_timeout_s
        self.engine_id = f"emu-{next(self._engine_ids)}"
        self.faults = Faults()
        self.stats = InstanceStats()
        self.time_scale = time_scale
        self.clock_mhz = clock_mhz or model.max_clock_mhz
        self.clock_token = clock_token
        self.control = MemoryControl(
            allowed_clocks_mhz or _default_allowed_clocks(model), self.clock_mhz
        )  # POST /voltana/clock, GET /voltana/iterations
        self.ceiling = MemoryCeiling()  # POST /voltana/ceiling (the router's power budget)
        self.engine: EmulatedEngine | None = None
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._blocks = itertools.count()
        self.app = self._build_app()

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def router_entry(self) -> str:
        """How the router's config names this instance (SGLang prefill: ``"URL BOOTSTRAP_PORT"``)."""
        if self.protocol == "sglang" and self.role == "prefill":
            return f"{self.url} {self.bootstrap_port}"
        return self.url

    @property
    def alive(self) -> bool:
        """True while serving."""
        return self._server is not None

    async def start(self, port: int = 0) -> None:
        """Serve on ``port`` (0: a free one; the same port again after :meth:`kill` to revive)."""
        self.engine = EmulatedEngine(
            self.model, self.clock_mhz, self.time_scale, self.faults, self.control, self.ceiling
        )
        self.engine.start()
        sock = bind_socket(self.host, port or self.port)
        self.port = sock.getsockname()[1]
        self._server, self._task = await start_server(self.app, sock, drain_timeout_s=1.0)

    async def stop(self, crash: bool = False) -> None:
        """Stop serving: gracefully, or as a crash (open streams cut mid-response)."""
        if self._server is not None and self._task is not None:
            server, task = self._server, self._task
            self._server = self._task = None
            if crash:
                server.kill_connections()
            stopping = asyncio.create_task(stop_server(server, task, crash=crash))
            if self.engine is not None:
                await self.engine.stop()
            await stopping

    async def kill(self) -> None:
        """Crash: connections dropped, in-flight requests lost (the port stays reserved for :meth:`start`)."""
        await self.stop(crash=True)

    # --- HTTP ---------------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models),
            Route("/health", self._health),
            Route("/metrics", self._metrics),
            Route("/v1/loads", self._loads),
            Route("/get_server_info", self._server_info),
            Route("/voltana/state", self._voltana_state),
            Route(RECORD_ROUTE, self._request_record),
            Route("/emulator/stats", self._stats),
            Route("/emulator/fault", self._set_fault, methods=["POST"]),
        ]
        app = Starlette(routes=routes)
        add_control_routes(app, self.control, self.clock_token)
        add_ceiling_routes(app, self.ceiling, self.clock_token)
        return app

    async def _stall(self) -> None:
        if self.faults.poll_delay_s > 0:
            await asyncio.sleep(self.faults.poll_delay_s)

    async def _health(self, request: Request) -> Response:
        await self._stall()
        return Response(status_code=200)

    async def _models(self, request: Request) -> Response:
        await self._stall()
        entry = {"id": self.model_name, "object": "model", "owned_by": "voltana-emulator", "created": 0,
                 "root": self.model_name, "parent": None, "max_model_len": self.max_model_len}  # fmt: skip
        return JSONResponse({"object": "list", "data": [entry]})

    async def _request_record(self, request: Request) -> Response:
        request_id = id_from_path(request.path_params["request_id"])
        joules = self.stats.energy_j.get(request_id)
        if joules is None:
            body = {"error": f"no finished request {request_id!r}", "reason": NOT_YET}
            return JSONResponse(body, status_code=404)
        return JSONResponse({"request_id": request_id, "phase": self.role, "energy_j": joules})

    def _load(self) -> tuple[int, int, int]:
        engine = self.engine
        if engine is None:
            return 0, 0, 0
        return len(engine.running), len(engine.waiting), engine.kv_tokens

    async def _metrics(self, request: Request) -> Response:
        await self._stall()
        running, waiting, kv = self._load()
        capacity = self.model.kv_capacity_tokens
        labels = f'engine="0",model_name="{self.model_name}"'
        blocks = capacity // KV_BLOCK_TOKENS
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(running)}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {kv / capacity if capacity else 0.0}",
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{block_size="{KV_BLOCK_TOKENS}",engine="0",'
            f'num_gpu_blocks="{blocks}"}} 1.0',
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def _loads(self, request: Request) -> Response:
        await self._stall()
        running, waiting, kv = self._load()
        capacity = self.model.kv_capacity_tokens
        load = {
            "dp_rank": 0,
            "num_running_reqs": running,
            "num_waiting_reqs": waiting,
            "num_total_reqs": running + waiting,
            "num_used_tokens": kv,
            "max_total_num_tokens": capacity,
            "token_usage": kv / capacity if capacity else 0.0,
        }
        return JSONResponse(
            {"timestamp": time.time(), "version": "emulator", "dp_rank_count": 1, "loads": [load]}
        )

    async def _server_info(self, request: Request) -> Response:
        mode = "null" if self.role == "mixed" else self.role
        info = {"disaggregation_mode": mode, "disaggregation_bootstrap_port": self.bootstrap_port}
        return JSONResponse(info)

    async def _voltana_state(self, request: Request) -> Response:
        await self._stall()
        state = {
            "instance_id": self.engine_id,
            "phase": self.role,
            "role": self.role,
            "sm_clock_mhz": self._clock_now_mhz(),
            "clock_ceiling_mhz": self.ceiling.ceiling_mhz(),
            "energy_joules": self.engine.energy_joules() if self.engine is not None else 0.0,
            "updated_at_s": time.time(),
            "allowed_clocks_mhz": list(self.control.allowed_clocks_mhz()),
            "capture_sizes": list(self.model.capture_sizes),
            "kv_capacity_tokens": self.model.kv_capacity_tokens,
        }
        return JSONResponse(state)

    def _clock_now_mhz(self) -> int:
        """The clock the next iteration runs at: the pin, else the default held under the ceiling."""
        clock, pinned = self.control.clock_mhz()
        ceiling = self.ceiling.ceiling_mhz()
        if pinned or ceiling is None:
            return clock
        return clock_under(self.control.allowed_clocks_mhz(), clock, ceiling)

    async def _stats(self, request: Request) -> Response:
        s = self.stats
        body = {k: v for k, v in vars(s).items() if k not in {"served_ids", "traceparents", "energy_j"}}
        body["served_ids"] = dict(s.served_ids)
        return JSONResponse(body)

    async def _set_fault(self, request: Request) -> Response:
        body = await request.json()
        if "slowdown" in body:
            self.faults.slowdown = float(body["slowdown"])
        if "error_status" in body:
            self.faults.error_status = body["error_status"]
        return JSONResponse({"slowdown": self.faults.slowdown, "error_status": self.faults.error_status})

    async def _completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    # --- generation ---------------------------------------------------------------------------------

    def _error(self, status: int, message: str) -> Response:
        self.stats.errors += 1
        kind = "BadRequestError" if status < 500 else "InternalServerError"
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    async def _generate(self, request: Request, chat: bool) -> Response:
        if self.faults.error_status is not None:
            return self._error(self.faults.error_status, "injected fault")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(400, "invalid JSON")
        if not isinstance(body, dict) or ("messages" not in body if chat else "prompt" not in body):
            return self._error(400, "missing prompt/messages")
        if traceparent := request.headers.get("traceparent"):
            self.stats.traceparents.append(traceparent)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        prompts = body.get("prompt")
        if not chat and isinstance(prompts, list) and _is_prompt_batch(prompts):
            if body.get("stream"):
                return self._error(400, "a batch of prompts cannot be streamed here")
            return await self._generate_batch(request, body, request_id, prompts)
        key = prompt_key(body)
        if self.faults.poison_prompt is not None and body.get("prompt") == self.faults.poison_prompt:
            self.faults.error_status = 500  # the engine is dead from now on
            return self._error(500, "EngineCore encountered an issue: engine dead")
        prompt_tokens = count_prompt_tokens(body)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        echo = not chat and body.get("echo") is True
        if isinstance(max_tokens, float) and max_tokens.is_integer():
            max_tokens = int(max_tokens)  # pydantic's lax int, as vLLM and SGLang parse it
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < (0 if echo else 1)):
            return self._error(400, "max_tokens must be a positive integer")
        scoring = max_tokens == 0  # echo without generation: the prompt is computed, one token sampled
        if self.role == "prefill" or scoring:
            max_tokens = 1  # a disaggregated prefill server computes the prompt and samples one token
        max_tokens, problem = self._fit_model_length(prompt_tokens, max_tokens, chat)
        if problem is not None:
            return self._error(400, problem)
        try:
            needs_prefill, problem = await self._arrange_kv(body, key)
        except TimeoutError:
            return self._error(500, "KV transfer timed out: no prefill published this bootstrap room")
        if problem is not None:
            return self._error(400, problem)
        req = EmuRequest(request_id, key, prompt_tokens, max_tokens, needs_prefill)
        assert self.engine is not None
        engine = self.engine
        if needs_prefill:
            self.stats.local_prefills += 1
        engine.submit(req)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._events(req, body, chat, include_usage), media_type="text/event-stream"
            )
        try:
            text = await until_disconnect(request, self._collect(req))
        except ClientGone:
            engine.abort(req)
            self.stats.aborted += 1
            return Response(status_code=499)
        if req.aborted:
            return self._error(500, "engine stopped")
        params = self._finished(req, body)
        if scoring:
            req.generated, text = 0, ""
        if echo and isinstance(body.get("prompt"), str):
            text = body["prompt"] + text
        answer = self._response(req, body, chat, text)
        if self.protocol == "vllm":
            answer["kv_transfer_params"] = params
        return JSONResponse(answer)

    async def _generate_batch(
        self, request: Request, body: dict[str, Any], request_id: str, prompts: list[Any]
    ) -> Response:
        """Completions with a list of prompts (as vLLM and SGLang accept): the requests reach the engine
        together, so they are scheduled as one batch; one choice per prompt, in order."""
        asked = body.get("max_tokens")
        if isinstance(asked, float) and asked.is_integer():
            asked = int(asked)  # pydantic's lax int, as vLLM and SGLang parse it
        if asked is not None and (not isinstance(asked, int) or asked < 1):
            return self._error(400, "max_tokens must be a positive integer")
        if self.role == "prefill":
            asked = 1
        reqs = []
        for i, prompt in enumerate(prompts):
            sub = {**body, "prompt": prompt}
            tokens = count_prompt_tokens(sub)
            max_tokens, refusal = self._fit_model_length(tokens, asked, chat=False)
            if refusal is not None:
                return self._error(400, f"prompt {i}: {refusal}")
            needs_prefill, problem = await self._arrange_kv(sub, prompt_key(sub))
            if problem is not None:
                return self._error(400, problem)
            self.stats.local_prefills += int(needs_prefill)
            reqs.append(EmuRequest(f"{request_id}-{i}", prompt_key(sub), tokens, max_tokens, needs_prefill))
        assert self.engine is not None
        engine = self.engine
        for req in reqs:
            engine.submit(req)
        try:
            texts = await until_disconnect(request, asyncio.gather(*(self._collect(r) for r in reqs)))
        except ClientGone:
            for req in reqs:
                engine.abort(req)
            self.stats.aborted += len(reqs)
            return Response(status_code=499)
        if any(req.aborted for req in reqs):
            return self._error(500, "engine stopped")
        answers = []
        for i, (req, text) in enumerate(zip(reqs, texts, strict=True)):
            self._finished(req, {**body, "prompt": prompts[i]})
            answers.append(self._response(req, body, False, text))
        answer = answers[0]
        answer["choices"] = [{**a["choices"][0], "index": i} for i, a in enumerate(answers)]
        usage = {k: sum(a["usage"][k] for a in answers) for k in answer["usage"]}
        answer["usage"] = usage
        return JSONResponse(answer)

    def _fit_model_length(self, prompt: int, max_tokens: int | None, chat: bool) -> tuple[int, str | None]:
        """(max_tokens to run, refusal) by the engine's length rule (see
        :func:`voltana.router.validation.required_output_tokens`): both refuse a prompt that leaves no room
        for a token; vLLM clamps ``max_tokens`` (absent: 16 for completions, the rest of the model's length
        for chat), SGLang refuses prompt + ``max_tokens`` over the context (chat without it: unchecked)."""
        room = self.max_model_len - prompt
        if room <= 0:
            return 0, (
                f"The decoder prompt (length {prompt}) is longer than the maximum model length of "
                f"{self.max_model_len}"
            )
        if max_tokens is None:
            if chat:
                return room, None
            max_tokens = DEFAULT_MAX_TOKENS
        if self.protocol == "sglang" and max_tokens > room:
            return 0, (
                f"Requested token count exceeds the model's maximum context length of {self.max_model_len} "
                f"tokens. You requested a total of {prompt + max_tokens} tokens"
            )
        return min(max_tokens, room), None

    async def _arrange_kv(self, body: dict[str, Any], key: str) -> tuple[bool, str | None]:
        """(needs local prefill, protocol problem) for this request on this instance."""
        if self.protocol == "sglang":
            if self.role == "mixed":
                return True, None
            room, host, port = (
                body.get("bootstrap_room"),
                body.get("bootstrap_host"),
                body.get("bootstrap_port"),
            )
            if not isinstance(room, int) or not isinstance(host, str) or not isinstance(port, int):
                return True, "disaggregation needs bootstrap_host, bootstrap_port and bootstrap_room"
            if not 0 <= room < 2**63:
                return True, "bootstrap_room must be a 63-bit non-negative integer"
            if self.role == "prefill":
                if (host, port) != (self.host, self.bootstrap_port):
                    return (
                        True,
                        f"bootstrap {host}:{port} is not this server ({self.host}:{self.bootstrap_port})",
                    )
                return True, None
            published = await asyncio.wait_for(
                asyncio.shield(self.bus.room(host, port, room)), timeout=self.bootstrap_timeout_s
            )
            self.bus.rooms.pop((host, port, room), None)
            if published != key:
                return True, f"KV of bootstrap room {room} belongs to another prompt"
            self.stats.remote_prefill_hits += 1
            return False, None
        if self.role != "decode":
            return True, None
        params = body.get("kv_transfer_params")
        if self.connector == "shared-storage":
            if key in self.bus.storage:
                self.stats.external_cache_hits += 1
                return False, None
            return True, None
        if isinstance(params, dict) and params.get("do_remote_prefill"):
            blocks = params.get("remote_block_ids") or [None]
            transfer = f"{params.get('remote_engine_id')}:{blocks[0]}"
            if self.bus.transfers.pop(transfer, None) == key:
                self.stats.remote_prefill_hits += 1
                return False, None
            self.stats.kv_misses += 1
        return True, None

    async def _collect(self, req: EmuRequest) -> str:
        parts: list[str] = []
        while (token := await req.tokens.get()) is not None:
            parts.append(token)
        return "".join(parts)

    def _finished(self, req: EmuRequest, body: dict[str, Any]) -> dict[str, Any] | None:
        """Bookkeeping after a request completed; returns the kv_transfer_params a vLLM prefill hands out."""
        self.stats.completed += 1
        self.stats.energy_j[req.request_id] = req.energy_j
        if len(self.stats.energy_j) > ENERGY_RECORDS_KEPT:
            del self.stats.energy_j[next(iter(self.stats.energy_j))]
        if self.role != "prefill":
            self.stats.served_ids[req.request_id] += 1
            return None
        if self.protocol == "sglang":
            room = self.bus.room(self.host, self.bootstrap_port or 0, body["bootstrap_room"])
            if not room.done():
                room.set_result(req.key)
            return None
        if self.connector == "shared-storage":
            self.bus.storage.add(req.key)
            return None
        params = body.get("kv_transfer_params")
        if not (isinstance(params, dict) and params.get("do_remote_decode")):
            return None
        first_block = next(self._blocks) * 1000
        blocks = list(range(first_block, first_block + -(-req.prompt_tokens // KV_BLOCK_TOKENS)))
        self.bus.transfers[f"{self.engine_id}:{blocks[0]}"] = req.key
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": self.engine_id,
            "remote_block_ids": blocks,
            "remote_host": self.host,
            "remote_port": self.port,
            "tp_size": 1,
        }

    def _response(self, req: EmuRequest, body: dict[str, Any], chat: bool, text: str) -> dict[str, Any]:
        return completion_object(
            req.request_id, self.model_name, chat, text, req.prompt_tokens, req.generated
        )

    async def _events(
        self, req: EmuRequest, body: dict[str, Any], chat: bool, include_usage: bool
    ) -> AsyncIterator[bytes]:
        assert self.engine is not None
        engine = self.engine
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def event(delta_text: str | None, finish: str | None, role: bool = False) -> bytes:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if delta_text is not None:
                    delta["content"] = delta_text
                choice["delta"] = delta
            else:
                choice["text"] = delta_text or ""
            chunk = {"id": f"cmpl-{req.request_id}", "object": obj, "created": created,
                     "model": self.model_name, "choices": [choice]}  # fmt: skip
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        try:
            if chat:
                yield event("", None, role=True)
            while (token := await req.tokens.get()) is not None:
                yield event(token, None)
            if req.aborted:
                return  # engine stopped: the stream ends without [DONE]
            self._finished(req, body)
            yield event(None if chat else "", "length")
            if include_usage:
                usage = {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.generated,
                         "total_tokens": req.prompt_tokens + req.generated}  # fmt: skip
                tail = {"id": f"cmpl-{req.request_id}", "object": obj, "created": created,
                        "model": self.model_name, "choices": [], "usage": usage}  # fmt: skip
                yield b"data: " + json.dumps(tail).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            if not req.finished:
                engine.abort(req)
                self.stats.aborted += 1


class EmulatorCluster:
    """``num_prefill`` + ``num_decode`` emulated instances of one protocol on one event loop."""

    def __init__(
        self,
        protocol: Protocol,
        num_prefill: int,
        num_decode: int,
        *,
        gpu: str = "a100-80gb",
        model: str = "llama-3.1-8b",
        model_name: str = "emulated-model",
        time_scale: float = 1.0,
        connector: Connector = "nixl",
        host: str = "127.0.0.1",
        first_bootstrap_port: int = 8998,
        bootstrap_timeout_s: float = 10.0,
        clock_token: str | None = None,
        clocks: ClockConfig | None = None,
    ) -> None:
        perf = performance_model(gpu, model)
        allowed = resolve_allowed_clocks(clocks or ClockConfig(), perf.supported_clocks_mhz)
        self.bus = KvBus()
        self.model_name = model_name

        def make(role: Role, bootstrap_port: int | None = None) -> EmulatedInstance:
            return EmulatedInstance(
                protocol=protocol,
                role=role,
                bus=self.bus,
                model=perf,
                model_name=model_name,
                time_scale=time_scale,
                connector=connector,
                host=host,
                bootstrap_port=bootstrap_port,
                bootstrap_timeout_s=bootstrap_timeout_s,
                clock_token=clock_token,
                allowed_clocks_mhz=allowed,
            )

        self.prefill = [
            make("prefill", first_bootstrap_port + i if protocol == "sglang" else None)
            for i in range(num_prefill)
        ]
        self.decode = [make("decode") for _ in range(num_decode)]

    @property
    def instances(self) -> list[EmulatedInstance]:
        """Prefill instances, then decode instances."""
        return self.prefill + self.decode

    async def start(self, ports: list[int] | None = None) -> None:
        """Start every instance (on ``ports`` in order, else free ports)."""
        chosen = ports or [0] * len(self.instances)
        for inst, port in zip(self.instances, chosen, strict=True):
            await inst.start(port)

    async def stop(self) -> None:
        """Stop every live instance."""
        await asyncio.gather(*(inst.stop() for inst in self.instances))

    def router_lists(self) -> tuple[list[str], list[str]]:
        """(prefill entries, decode entries) for ``router.prefill`` / ``router.decode``."""
        return [i.router_entry for i in self.prefill], [i.router_entry for i in self.decode]
