"""An engine emulator: a small server speaking vLLM's or SGLang's HTTP and P/D protocols, timed by the
simulated GPU, cheap enough to run 20 instances on 2 cores (all on one event loop).

It is a test double for the router, so it checks the protocol like the real engines do: a vLLM decode
instance only skips its prefill when the ``kv_transfer_params`` it gets were issued by a prefill instance for
the same prompt (else it counts a miss and prefills locally); an SGLang decode instance waits for the KV of
``bootstrap_room`` published by the prefill instance at ``bootstrap_host:bootstrap_port`` and fails when it
does not come or belongs to another prompt. The shared-storage connector case: prefill stores the prompt's KV,
decode finds it (an "external cache hit") without any parameter exchanged.

The engine model (continuous batching timed by the simulated GPU, energy per request) is
:mod:`voltana.emulator.engine`; the answers (text, completion objects) :mod:`voltana.emulator.responses`.

Like vLLM, ``echo: true`` puts the prompt in front of the text, and ``max_tokens: 0`` with ``echo`` scores the
prompt without generating.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from voltana.core.config import ClockConfig
from voltana.core.state_payload import InstanceStatePayload
from voltana.core.types import EnergySource
from voltana.emulator.engine import EmulatedEngine, EmuRequest, Faults
from voltana.emulator.responses import (
    completion_object,
    count_prompt_tokens,
    is_prompt_batch,
    prompt_key,
)
from voltana.hardware.simulated import PerformanceModel, performance_model
from voltana.plugins.ecofreq.factory import resolve_allowed_clocks
from voltana.profiler.ceiling_api import MemoryCeiling, add_ceiling_routes, clock_under
from voltana.profiler.engine_api import MemoryControl, add_control_routes
from voltana.router.disconnect import ClientGone, until_disconnect
from voltana.router.request_ids import NOT_YET, RECORD_ROUTE, id_from_path
from voltana.router.serving import EmbeddedServer, bind_socket, start_server, stop_server
from voltana.sim.engine import engine_limits

Protocol = Literal["vllm", "sglang"]
Role = Literal["prefill", "decode", "mixed"]
Connector = Literal["nixl", "shared-storage"]
DEFAULT_MAX_TOKENS = 16
KV_BLOCK_TOKENS = 16
ENERGY_RECORDS_KEPT = 10_000
STATE_POLICY = "static"
"""The clock policy the emulator reports: it runs its default clock, or a pin, held under a ceiling."""


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
            self.model,
            self.clock_mhz,
            self.time_scale,
            self.faults,
            self.control,
            self.ceiling,
            limits=engine_limits(self.protocol, self.model, max_model_len=self.max_model_len),
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
        return len(engine.running), engine.num_waiting, engine.kv_tokens

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
        return JSONResponse(self.state().to_json())

    def state(self) -> InstanceStatePayload:
        """This instance's ``GET /voltana/state``: the payload the engine adapters publish
        (:class:`~voltana.core.state_payload.InstanceStatePayload`). The emulator runs a static clock (its
        default, a pin, held under the router's ceiling) and its energy is the simulated GPU's."""
        running, waiting, kv = self._load()
        engine = self.engine
        return InstanceStatePayload(
            instance_id=self.engine_id,
            role=self.role,
            policy=STATE_POLICY,
            monitor_only=False,
            sm_clock_mhz=self._clock_now_mhz(),
            clock_ceiling_mhz=self.ceiling.ceiling_mhz(),
            allowed_clocks_mhz=tuple(self.control.allowed_clocks_mhz()),
            capture_sizes=tuple(self.model.capture_sizes),
            num_requests_running=running,
            num_requests_waiting=waiting,
            kv_tokens=kv,
            kv_capacity_tokens=self.model.kv_capacity_tokens,
            iterations=engine.iterations if engine is not None else 0,
            energy_source=EnergySource.SIMULATED.value,
            energy_joules=engine.energy_joules() if engine is not None else 0.0,
            idle_energy_joules=engine.idle_energy_joules() if engine is not None else 0.0,
            updated_at_s=time.time(),
        )

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
        if not chat and isinstance(prompts, list) and is_prompt_batch(prompts):
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
