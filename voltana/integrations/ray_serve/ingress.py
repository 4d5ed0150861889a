"""The OpenAI-compatible ingress of the P/D app: prefill on one replica, then decode on another.

Served by Ray Serve's HTTP proxy (``@serve.ingress`` on a FastAPI app): ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream`` or not), ``GET /v1/models``, ``GET /health`` and
``GET /voltana/routing`` (the routing decisions of this ingress process, see
:func:`~voltana.integrations.ray_serve.stats.recorded_decisions`). Bodies are checked like ``voltana
router`` checks them (one-line 4xx errors). Each request gets one trace: the ingress span (child of the
client's ``traceparent`` when there is one) whose W3C context travels to the prefill and the decode replica,
each of which records its phase's span with its joules.

The prefill and decode handles route through the deployments' request routers (:mod:`.routing`). A failure
before the first byte reaches the client (a replica died, an engine stopped) retries the whole request up to
``max_retries`` times; Ray drops a dead replica from the routers' candidates. A failure in the middle of a
stream ends it with an OpenAI error event and no ``[DONE]``: a client never takes a cut answer for whole.
"""

# No ``from __future__ import annotations`` here: Ray Serve's class-based ingress hands these methods to
# FastAPI, which then sees string annotations it cannot resolve (``request: Request`` became a required query
# parameter, 422 on every request, with FastAPI 0.165).
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from voltana.core.config import VoltanaConfig
from voltana.emulator.responses import completion_object
from voltana.integrations.ray_serve.routing import ROUTE_KEY
from voltana.integrations.ray_serve.stats import recorded_decisions
from voltana.plugins.telemetry import configure_telemetry, start_request_trace, telemetry_wanted
from voltana.router.errors import RouterError, error_body
from voltana.router.validation import Kind, ParsedRequest, decode_json, parse_request

log = logging.getLogger("voltana.ray_serve")
DEFAULT_MAX_TOKENS = 16

app = FastAPI(title="voltana P/D on Ray Serve")


def chunk_event(parsed: ParsedRequest, request_id: str, text: str | None, finish: str | None) -> bytes:
    """One server-sent event of a streamed (chat) completion."""
    chat = parsed.kind == "chat"
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["delta"] = {"content": text} if text is not None else {}
    else:
        choice["text"] = text or ""
    chunk = {
        "id": f"cmpl-{request_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": parsed.model,
        "choices": [choice],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def one_line(exc: BaseException | None) -> str:
    """``Type: message`` of ``exc`` on one line (at most 300 characters)."""
    if exc is None:
        return "unknown error"
    lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


@serve.ingress(app)
class VoltanaPDIngress:
    """The ingress deployment (see module docstring); ``config`` is the voltana config as a dict."""

    def __init__(
        self,
        prefill: DeploymentHandle[Any],
        decode: DeploymentHandle[Any],
        *,
        model_name: str,
        config: Mapping[str, Any] | None = None,
        max_retries: int = 2,
    ) -> None:
        self.prefill = prefill
        self.decode = decode.options(stream=True)
        self.model_name = model_name
        self.config = VoltanaConfig(**dict(config or {}))
        self.max_retries = max_retries
        self.counters: Counter[str] = Counter()
        if telemetry_wanted(self.config):
            configure_telemetry(self.config)

    @app.get("/health")
    async def health(self) -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models(self) -> JSONResponse:
        entry = {"id": self.model_name, "object": "model", "owned_by": "voltana", "created": 0}
        return JSONResponse({"object": "list", "data": [entry]})

    @app.get("/voltana/routing")
    async def routing(self) -> JSONResponse:
        return JSONResponse({"decisions": recorded_decisions(), "counters": dict(self.counters)})

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve("completions", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve("chat", request)

    # --- P/D orchestration ------------------------------------------------------------------------------
    async def _serve(self, kind: Kind, request: Request) -> Response:
        try:
            body = decode_json(await request.body())
            parsed = parse_request(kind, body, {self.model_name: None}, self.config.router.max_tokens_limit)
        except RouterError as exc:
            self.counters["bad_request"] += 1
            return exc.response()
        request_id = uuid.uuid4().hex
        incoming = dict(request.headers)
        if parsed.stream:
            return StreamingResponse(
                self._stream(parsed, request_id, incoming), media_type="text/event-stream"
            )
        with start_request_trace(request_id, parsed.model, incoming) as headers:
            last: Exception | None = None
            for attempt in range(self.max_retries + 1):
                try:
                    tokens = [t async for t in self._phases(parsed, request_id, headers)]
                except RayError as exc:
                    last = exc
                    self.counters["retries" if attempt < self.max_retries else "failed"] += 1
                    log.warning("request %s attempt %d failed: %s", request_id, attempt + 1, one_line(exc))
                    continue
                self.counters["completed"] += 1
                answer = completion_object(
                    request_id, parsed.model, parsed.kind == "chat", "".join(tokens), parsed.input_tokens,
                    len(tokens),
                )  # fmt: skip
                return JSONResponse(answer)
        message = f"request failed on {self.max_retries + 1} attempts; last error: {one_line(last)}"
        return JSONResponse(error_body(503, message), status_code=503)

    async def _phases(
        self, parsed: ParsedRequest, request_id: str, trace_headers: dict[str, str]
    ) -> AsyncIterator[str]:
        """Prefill on the replica the prefill router picks, then stream the decode of the one the decode
        router picks (its text pieces)."""
        max_tokens = parsed.max_tokens or DEFAULT_MAX_TOKENS
        payload: dict[str, Any] = {
            "request_id": request_id,
            "body": parsed.body,
            "trace_headers": trace_headers,
            ROUTE_KEY: {
                "request_id": request_id,
                "input_tokens": parsed.input_tokens,
                "max_output_tokens": max_tokens,
                "arrival_time_s": time.time(),
            },
        }
        prefilled = await self.prefill.prefill.remote(payload)
        decode_payload = {
            **payload,
            "max_tokens": max_tokens,
            "kv_transfer_params": prefilled["kv_transfer_params"],
        }
        tokens = cast(DeploymentResponseGenerator[str], self.decode.generate.remote(decode_payload))
        async for token in tokens:
            yield token

    async def _stream(
        self, parsed: ParsedRequest, request_id: str, incoming: dict[str, str]
    ) -> AsyncIterator[bytes]:
        with start_request_trace(request_id, parsed.model, incoming) as headers:
            for attempt in range(self.max_retries + 1):
                sent = False
                try:
                    async for token in self._phases(parsed, request_id, headers):
                        sent = True
                        yield chunk_event(parsed, request_id, token, None)
                except Exception as exc:  # past the first byte, any failure must reach the client
                    if sent or attempt == self.max_retries or not isinstance(exc, RayError):
                        self.counters["failed"] += 1
                        error = error_body(503, f"request failed mid-stream: {one_line(exc)}")
                        yield b"data: " + json.dumps(error).encode() + b"\n\n"
                        return
                    self.counters["retries"] += 1
                    continue
                self.counters["completed"] += 1
                yield chunk_event(parsed, request_id, None, "length")
                yield b"data: [DONE]\n\n"
                return
