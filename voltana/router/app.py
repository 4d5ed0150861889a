"""The router's HTTP face (FastAPI): OpenAI endpoints, health, Prometheus metrics and the admin API."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from voltana.core.config import ConfigError, RouterConfig, VoltanaConfig
from voltana.core.policies import UnknownPolicyError
from voltana.core.types import Phase, Slo
from voltana.plugins.routing_options import route_options
from voltana.router.choice import InstanceChooser
from voltana.router.disconnect import ClientGone, until_disconnect
from voltana.router.errors import RouterError, error_body
from voltana.router.instances import InstanceRegistry, parse_endpoint
from voltana.router.observability import RouterMetrics, extract_context, tracer_for
from voltana.router.polling import Poller
from voltana.router.power_budget import RouterBudget, budget_predictors
from voltana.router.predictors import route_predictors
from voltana.router.proxy import BackendRejected, DecodeResult, Proxy, send_trace_config
from voltana.router.tokens import HfPromptTokenizer, PromptTokenizer, count_for_length_check
from voltana.router.validation import (
    Kind,
    ParsedRequest,
    check_model_length,
    decode_json,
    parse_request,
    required_output_tokens,
)

log = logging.getLogger("voltana.router")
ENDPOINTS: dict[str, Kind] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
DRAINING_RETRY_AFTER_S = 5
TOKENS_HEADER = "x-voltana-prompt-tokens"
"""Response header: ``<longest prompt tokens>; source=exact|tokenizer|estimate`` (how they were counted)."""


@dataclass
class RouterState:
    """Everything the endpoints share; built by :func:`build_router_app`, started by its lifespan."""

    config: RouterConfig
    registry: InstanceRegistry
    chooser: InstanceChooser
    metrics: RouterMetrics
    tracer: trace.Tracer
    known_policies: dict[str, set[str]]
    poller: Poller | None = None
    proxy: Proxy | None = None
    budget: RouterBudget | None = None
    draining: bool = False
    inflight: int = 0
    tokenizer: PromptTokenizer | None = None


def build_registry(config: RouterConfig) -> InstanceRegistry:
    """Instances from config (raises ValueError naming a malformed entry)."""
    default_port = config.bootstrap_port if config.backend == "sglang" else None
    return InstanceRegistry(
        [parse_endpoint(u, default_port) for u in config.prefill],
        [parse_endpoint(u) for u in config.decode],
        eject_after_failures=config.eject_after_failures,
        readmit_after_successes=config.readmit_after_successes,
        stale_after_s=config.stale_after_s,
        max_inflight_per_instance=config.max_inflight_per_instance,
    )


def build_router_app(
    config: VoltanaConfig,
    hook: Any,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    known_policies: dict[str, set[str]] | None = None,
    seed: int | None = None,
) -> FastAPI:
    """The router app for ``config.router``; ``hook`` is ``pm.hook`` (routing policies are plugins)."""
    rc = config.router
    registry = build_registry(rc)
    chooser = InstanceChooser(
        hook,
        registry,
        prefill_policy=config.policy.prefill_route,
        decode_policy=config.policy.decode_route,
        slo=Slo(config.slo.ttft_s, config.slo.itl_s),
        options=route_options(config.policy),
        seed=seed,
        predictors=(predictors := route_predictors(config)),
    )
    budget_w = config.cluster.power_budget_w
    if budget_w is not None and predictors is None:
        budget_predictors(config)  # raises its ConfigError
    if budget_w is not None and config.engine.clock_token is None:
        raise ConfigError(
            f"cluster.power_budget_w = {budget_w:g} needs engine.clock_token: the router pushes clock "
            "ceilings to POST /voltana/ceiling with the engines' token (set the same token on both)"
        )
    state = RouterState(
        rc, registry, chooser, RouterMetrics(), tracer_for(tracer_provider), known_policies or {}
    )
    if rc.tokenizer:
        state.tokenizer = HfPromptTokenizer(rc.tokenizer)  # ConfigError (one line) when it cannot load

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One HTTP client, aiohttp: proxying a streamed P/D exchange it costs ~10x less CPU per request than
        # httpx at the router's concurrency (benchmarks/bench_http_client.py), which is what keeps the
        # router's added latency near a millisecond. Engine requests and polls get separate sessions (their
        # timeouts differ). Idle connections close before the engines close them (vLLM/SGLang: uvicorn's
        # 5 s keep-alive): a request written on a connection the engine is closing is lost ("connection
        # reset").
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=rc.pool_idle_timeout_s)
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=rc.connect_timeout_s,
            connect=rc.connect_timeout_s,
            sock_read=rc.request_timeout_s,
        )
        poll_connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=rc.pool_idle_timeout_s)
        connect_s = rc.connect_timeout_s
        poll_timeout = aiohttp.ClientTimeout(
            total=max(rc.poll_interval_s, 1.0), sock_connect=connect_s, connect=connect_s
        )
        async with (
            aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                trace_configs=[send_trace_config()],
            ) as session,
            aiohttp.ClientSession(connector=poll_connector, timeout=poll_timeout) as poll_client,
        ):
            state.proxy = Proxy(
                backend=rc.backend,
                registry=registry,
                chooser=chooser,
                session=session,
                metrics=state.metrics,
                tracer=state.tracer,
                max_retries=rc.max_retries,
                request_timeout_s=rc.request_timeout_s,
                kv_transfer_params=rc.kv_transfer_params,
                report_energy=rc.report_energy,
            )
            state.poller = Poller(registry, poll_client, rc.backend, rc.poll_interval_s)
            if budget_w is not None and predictors is not None:
                token = config.engine.clock_token
                state.budget = RouterBudget(
                    registry,
                    poll_client,
                    predictors,
                    config.cluster,
                    token.get_secret_value() if token else None,
                )
                state.poller.after_poll = state.budget.after_poll  # pushed ceilings lapse on their own
            await state.poller.poll_all()
            state.poller.start()
            try:
                yield
            finally:
                await state.poller.stop()

    app = FastAPI(title="voltana router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = state

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(RouterError)
    async def _router_error(request: Request, exc: RouterError) -> Response:
        return exc.response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected router error on %s", request.url.path)
        state.metrics.errors.labels("internal").inc()
        return JSONResponse(error_body(500, f"internal router error: {type(exc).__name__}"), status_code=500)

    async def openai_endpoint(request: Request) -> Response:
        kind = ENDPOINTS[request.url.path]
        try:
            response = await _serve(state, request, kind)
        except RouterError as exc:
            kind_label = "bad_request" if exc.status < 429 else None
            if kind_label:
                state.metrics.errors.labels(kind_label).inc()
            response = exc.response()
        state.metrics.requests.labels(kind, str(response.status_code)).inc()
        return response

    for path in ENDPOINTS:  # plain Starlette routes: no FastAPI dependency solving on the hot path
        app.router.add_route(path, openai_endpoint, methods=["POST"], include_in_schema=False)

    @app.get("/v1/models")
    async def models() -> Response:
        limits = state.registry.model_limits()
        names = sorted(set(rc.served_models) or set(limits))
        return JSONResponse({"object": "list", "data": [_model_card(state, n, limits.get(n)) for n in names]})

    @app.get("/voltana/budget")
    async def budget() -> Response:
        if state.budget is None:
            return JSONResponse({"budget_w": None, "detail": "no cluster.power_budget_w configured"})
        return JSONResponse(state.budget.status())

    @app.get("/health")
    async def health() -> Response:
        phases = {p.value: len(state.registry.usable(p)) for p in Phase}
        ok = not state.draining and all(phases.values())
        body = {"status": "ok" if ok else ("draining" if state.draining else "degraded"), "instances": phases}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        for inst in state.registry:
            state.metrics.instance_admitted.labels(inst.instance_id, inst.phase.value, inst.url).set(
                1 if inst.admitted else 0
            )
            state.metrics.instance_inflight.labels(inst.instance_id, inst.phase.value).set(inst.inflight)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    _add_admin_routes(app, state)
    return app


async def _serve(state: RouterState, request: Request, kind: Kind) -> Response:
    """One OpenAI request: validate, route, forward; errors become RouterError (4xx/5xx with a message)."""
    arrived = time.perf_counter()
    if state.draining:
        raise RouterError(
            503,
            "router is shutting down; retry on another router",
            code="draining",
            headers={"retry-after": str(DRAINING_RETRY_AFTER_S)},
        )
    models = _served_models(state)
    body = decode_json(await request.body())
    if not models and body.get("model") in (None, ""):  # as the same request naming a model: no engine yet
        raise RouterError(
            503,
            "no served model is known yet (no engine has answered); retry, or name the 'model'",
            code="no_instance",
            headers={"retry-after": str(state.registry.retry_after_s(Phase.PREFILL))},
        )
    parsed = parse_request(kind, body, models, state.config.max_tokens_limit)
    model_len = models.get(parsed.model)
    if state.tokenizer is not None:
        output_tokens = required_output_tokens(parsed, state.config.backend)
        parsed = await count_for_length_check(parsed, state.tokenizer, model_len, output_tokens)
    state.metrics.prompt_token_counts.labels(parsed.tokens_source).inc()
    check_model_length(parsed, model_len, state.config.backend)
    proxy = state.proxy
    assert proxy is not None
    headers = {k.lower(): v for k, v in request.headers.items()}
    span = state.tracer.start_span(
        f"POST {request.url.path}",
        context=extract_context(headers),
        kind=SpanKind.SERVER,
        attributes={"gen_ai.request.model": parsed.model, "gen_ai.operation.name": kind},
    )
    ex = proxy.new_exchange(parsed, headers, span)
    span.set_attribute("voltana.request.id", ex.request_id)
    state.inflight += 1
    state.metrics.inflight.inc()
    streaming = False
    finished = False

    def done() -> None:
        nonlocal finished
        if finished:
            return
        finished = True
        state.inflight -= 1
        state.metrics.inflight.dec()
        span.end()

    try:
        try:
            result: DecodeResult = await until_disconnect(request, proxy.run(ex))
        except ClientGone:
            state.metrics.errors.labels("client_disconnect").inc()
            span.set_status(Status(StatusCode.ERROR, "client disconnected"))
            return Response(status_code=499)
        except BackendRejected as exc:
            passed = {TOKENS_HEADER: tokens_header(parsed)}
            if exc.retry_after:
                passed["retry-after"] = exc.retry_after
            return Response(exc.content, status_code=exc.status, media_type=exc.content_type, headers=passed)
        except RouterError as exc:
            span.set_status(Status(StatusCode.ERROR, exc.message))
            raise
        span.set_attribute("voltana.decode.instance", result.instance.instance_id)
        state.metrics.added_latency.observe(max(0.0, time.perf_counter() - arrived - ex.upstream_s))
        headers_out = {
            "x-request-id": ex.request_id,
            TOKENS_HEADER: tokens_header(parsed),
        }
        if result.content is not None:
            content = result.content
            if proxy.report_energy:
                content = await proxy.with_energy(ex, content)
            return Response(content, media_type=result.content_type, headers=headers_out)
        streaming = True

        async def close() -> None:  # also when the stream never started (client gone before the headers)
            await proxy.finish(result)
            done()

        return ClosingStream(
            proxy.stream(ex, result, done), close, media_type="text/event-stream", headers=headers_out
        )
    finally:
        if not streaming:
            done()


def tokens_header(parsed: ParsedRequest) -> str:
    """:data:`TOKENS_HEADER` of ``parsed``."""
    return f"{parsed.longest_prompt_tokens}; source={parsed.tokens_source}"


class ClosingStream(StreamingResponse):
    """A streamed response that always runs ``on_close`` once it is over, however it ended."""

    def __init__(self, content: Any, on_close: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


def _model_card(state: RouterState, model: str, max_model_len: int | None) -> dict[str, Any]:
    """One ``/v1/models`` entry as vLLM writes it (``root``, ``parent``, ``permission``): an engine's own
    entry when one was polled, with the smallest ``max_model_len`` over the instances."""
    card: dict[str, Any] = {"id": model, "object": "model", "created": 0, "owned_by": "voltana",
                            "root": model, "parent": None}  # fmt: skip
    for inst in state.registry:
        if model in inst.model_cards:
            card.update(inst.model_cards[model])
            break
    card["max_model_len"] = max_model_len
    card.setdefault("permission", [_default_permission(card.get("created", 0))])
    return card


def _default_permission(created: Any) -> dict[str, Any]:
    """vLLM's ``ModelPermission`` defaults, for engines whose ``/v1/models`` has none."""
    return {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False}  # fmt: skip


def _served_models(state: RouterState) -> dict[str, int | None]:
    limits = state.registry.model_limits()
    if state.config.served_models:
        return {m: limits.get(m) for m in state.config.served_models}
    return limits


def _add_admin_routes(app: FastAPI, state: RouterState) -> None:
    """``/admin/*``: list instances, change a routing policy, drain or resume an instance (bearer token)."""

    def authorize(request: Request) -> None:
        token = state_token(state)
        if token is None:
            raise RouterError(403, "admin API is disabled: set router.admin_token to enable it")
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise RouterError(401, "admin API needs 'Authorization: Bearer <router.admin_token>'")

    @app.get("/admin/instances")
    async def list_instances(request: Request) -> Response:
        authorize(request)
        rows = [
            {
                "id": i.instance_id,
                "phase": i.phase.value,
                "url": i.url,
                "admitted": i.admitted,
                "draining": i.draining,
                "inflight": i.inflight,
                "consecutive_failures": i.consecutive_failures,
                "polled_age_s": round(time.monotonic() - i.polled_at_s, 3) if i.report else None,
            }
            for i in state.registry
        ]
        policies = {p.value: state.chooser.policy(p) for p in Phase}
        return JSONResponse({"instances": rows, "policies": policies})

    @app.post("/admin/policy")
    async def set_policy(request: Request) -> Response:
        authorize(request)
        body = decode_json(await request.body())
        changes: dict[Phase, str] = {}
        for phase in Phase:
            name = body.get(phase.value)
            if name is None:
                continue
            known = state.known_policies.get("route")
            if not isinstance(name, str) or (known and name not in known):
                choices = ", ".join(sorted(known or ()))
                raise RouterError(400, f"unknown routing policy {name!r} for {phase.value}; known: {choices}")
            changes[phase] = name
        if not changes:
            raise RouterError(400, "give 'prefill' and/or 'decode' policy names")
        for phase, name in changes.items():
            try:
                state.chooser.set_policy(phase, name)
            except UnknownPolicyError as exc:
                raise RouterError(400, f"{exc} (for {phase.value})") from None
            log.warning("routing policy for %s set to %s", phase.value, name)
        return JSONResponse({"policies": {p.value: state.chooser.policy(p) for p in Phase}})

    async def set_draining(request: Request, draining: bool) -> Response:
        authorize(request)
        instance_id = request.path_params["instance_id"]
        inst = state.registry.by_id.get(instance_id)
        if inst is None:
            raise RouterError(404, f"no instance {instance_id!r}; known: {', '.join(state.registry.by_id)}")
        inst.draining = draining
        inst.touch()
        log.warning("instance %s %s", instance_id, "draining" if draining else "resumed")
        return JSONResponse({"id": instance_id, "draining": draining, "inflight": inst.inflight})

    @app.post("/admin/instances/{instance_id}/drain")
    async def drain(request: Request) -> Response:
        return await set_draining(request, True)

    @app.post("/admin/instances/{instance_id}/resume")
    async def resume(request: Request) -> Response:
        return await set_draining(request, False)


def state_token(state: RouterState) -> str | None:
    """The configured admin token (None: admin API disabled)."""
    token = state.config.admin_token
    return token.get_secret_value() if token is not None and token.get_secret_value() else None
