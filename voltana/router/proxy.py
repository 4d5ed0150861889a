"""Forwarding one client request through a (prefill, decode) pair, with retries, for vLLM and SGLang.

vLLM: the prefill instance gets the request with ``max_tokens=1`` (and, NIXL-style, ``kv_transfer_params =
{"do_remote_decode": true}``); the ``kv_transfer_params`` it returns are copied into the decode request.
With a connector that exchanges nothing (shared storage) the prefill answer carries no params and the decode
request goes out unchanged. SGLang: the same request, plus ``bootstrap_host``/``bootstrap_port``/
``bootstrap_room`` (random 63-bit), goes to both instances at once; the answer is streamed from decode.

Engine calls go through one aiohttp session (far cheaper per call than httpx, see ``app.py``).

Retries: a failed prefill, or a decode that fails before any output reached the client, is retried on other
instances (``max_retries``). A decode that dies mid-stream ends the stream with an OpenAI error event, so no
request is ever lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from voltana.core.types import Phase, RouteRequest
from voltana.router.choice import InstanceChooser, NoInstanceError
from voltana.router.errors import RouterError, UpstreamError, error_body
from voltana.router.instances import Instance, InstanceRegistry
from voltana.router.observability import RouterMetrics, inject_headers
from voltana.router.polling import Backend
from voltana.router.validation import ParsedRequest

log = logging.getLogger("voltana.router")
FORWARDED_HEADERS = ("authorization",)
EVENT_END = b"\n\n"


class BackendRejected(Exception):  # noqa: N818 - an answer to pass through, not a failure
    """An engine answered 4xx: the request itself is at fault; passed through to the client as is."""

    def __init__(self, status: int, content: bytes, content_type: str) -> None:
        super().__init__(f"engine rejected the request with {status}")
        self.status = status
        self.content = content
        self.content_type = content_type


@dataclass(slots=True)
class Exchange:
    """Per-request bookkeeping: id, headers to forward, time spent waiting on engines (s)."""

    request_id: str
    parsed: ParsedRequest
    headers: dict[str, str]
    span: trace.Span
    upstream_s: float = 0.0
    attempts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DecodeResult:
    """The decode instance's answer: a whole body (passed on unparsed), or an open event stream whose first
    event was read."""

    instance: Instance
    content: bytes | None = None
    content_type: str = "application/json"
    first_events: bytes = b""
    events: AsyncIterator[bytes] | None = None
    response: aiohttp.ClientResponse | None = None
    complete: bool = False
    span: trace.Span | None = None
    prefill_task: asyncio.Task[Any] | None = None
    released: bool = False


def vllm_prefill_body(body: dict[str, Any], kv_transfer_params: bool) -> dict[str, Any]:
    """The prefill request of vLLM P/D: one token, not streamed, asking the engine to keep KV for decode."""
    prefill = dict(body)
    prefill["max_tokens"] = 1
    if "max_completion_tokens" in prefill:
        prefill["max_completion_tokens"] = 1
    prefill["stream"] = False
    prefill.pop("stream_options", None)
    prefill.pop("min_tokens", None)
    if kv_transfer_params:
        prefill["kv_transfer_params"] = {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        }
    return prefill


def sglang_bodies(
    body: dict[str, Any], prefill: Instance, room: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prefill body, decode body) of SGLang P/D: the request plus the bootstrap fields of ``prefill``."""
    decode = dict(body)
    decode["bootstrap_host"] = prefill.endpoint.host
    decode["bootstrap_port"] = prefill.endpoint.bootstrap_port
    decode["bootstrap_room"] = room
    prefill_body = dict(decode)
    prefill_body["stream"] = False
    prefill_body.pop("stream_options", None)
    return prefill_body, decode


class Proxy:
    """Runs requests through the P/D pairs of one backend kind."""

    def __init__(
        self,
        *,
        backend: Backend,
        registry: InstanceRegistry,
        chooser: InstanceChooser,
        session: aiohttp.ClientSession,
        metrics: RouterMetrics,
        tracer: trace.Tracer,
        max_retries: int,
        request_timeout_s: float,
        kv_transfer_params: bool,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.chooser = chooser
        self.session = session
        self.metrics = metrics
        self.tracer = tracer
        self.max_retries = max_retries
        self.request_timeout_s = request_timeout_s
        self.kv_transfer_params = kv_transfer_params

    def new_exchange(self, parsed: ParsedRequest, incoming: dict[str, str], span: trace.Span) -> Exchange:
        """Bookkeeping for one request; keeps the client's ``X-Request-Id`` when it sent one."""
        request_id = incoming.get("x-request-id") or f"voltana-{uuid.uuid4().hex}"
        headers = {"x-request-id": request_id, "content-type": "application/json"}
        for name in FORWARDED_HEADERS:
            if name in incoming:
                headers[name] = incoming[name]
        return Exchange(request_id, parsed, headers, span)

    async def run(self, ex: Exchange) -> DecodeResult:
        """Serve ``ex`` on some (P, D) pair, retrying failed instances; raises RouterError/BackendRejected."""
        route = RouteRequest(
            ex.request_id, ex.parsed.input_tokens, ex.parsed.max_tokens or 0, time.monotonic()
        )
        excluded: dict[Phase, set[str]] = {Phase.PREFILL: set(), Phase.DECODE: set()}
        for _ in range(1 + self.max_retries):
            try:
                if self.backend == "vllm":
                    return await self._attempt_vllm(ex, route, excluded)
                return await self._attempt_sglang(ex, route, excluded)
            except UpstreamError as exc:
                failed = self.registry.by_id[exc.instance_id]
                self.registry.record_failure(failed, str(exc))
                excluded[failed.phase].add(failed.instance_id)
                ex.attempts.append(str(exc))
                self.metrics.errors.labels("upstream").inc()
                log.info("request %s: %s; retrying elsewhere", ex.request_id, exc)
            except NoInstanceError as exc:
                if ex.attempts:
                    break  # every instance that could serve it failed: report those failures
                if exc.saturated:
                    self.metrics.errors.labels("saturated").inc()
                    raise RouterError(
                        429, str(exc), code="overloaded", headers={"retry-after": "1"}
                    ) from None
                self.metrics.errors.labels("no_instance").inc()
                raise RouterError(503, str(exc), code="no_instance") from None
        raise RouterError(
            502,
            f"request failed on {len(ex.attempts)} attempts: {'; '.join(ex.attempts)}",
            code="upstream_failed",
        )

    def _choose(self, phase: Phase, route: RouteRequest, excluded: dict[Phase, set[str]]) -> Instance:
        inst = self.chooser.choose(phase, route, frozenset(excluded[phase]))
        self.metrics.decisions.labels(phase.value, self.chooser.policy(phase), inst.instance_id).inc()
        self.metrics.decision_time.labels(phase.value).observe(self.chooser.last_decision_ns * 1e-9)
        return inst

    async def _attempt_vllm(
        self, ex: Exchange, route: RouteRequest, excluded: dict[Phase, set[str]]
    ) -> DecodeResult:
        decode = self._choose(Phase.DECODE, route, excluded)
        self.registry.acquire(decode)  # reserved while its prefill runs
        try:
            prefill = self._choose(Phase.PREFILL, route, excluded)
            answer = await self._call_json(
                ex, prefill, vllm_prefill_body(ex.parsed.body, self.kv_transfer_params)
            )
        finally:
            self.registry.release(decode)
        body = ex.parsed.body
        params = answer.get("kv_transfer_params")
        if params:
            body = dict(body, kv_transfer_params=params)
        return await self._decode(ex, decode, body)

    async def _attempt_sglang(
        self, ex: Exchange, route: RouteRequest, excluded: dict[Phase, set[str]]
    ) -> DecodeResult:
        decode = self._choose(Phase.DECODE, route, excluded)
        prefill = self._choose(Phase.PREFILL, route, excluded)
        prefill_body, decode_body = sglang_bodies(ex.parsed.body, prefill, secrets.randbits(63))
        prefill_task = asyncio.create_task(self._call_json(ex, prefill, prefill_body))
        decode_task = asyncio.create_task(self._decode(ex, decode, decode_body))
        pending: set[asyncio.Task[Any]] = {prefill_task, decode_task}
        try:
            while decode_task in pending:  # until decode answers (streaming: its first event) or one fails
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if prefill_task.done() and prefill_task.exception() is not None:
                    await _cancel(decode_task, self._discard)
                    raise prefill_task.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            prefill_task.cancel()
            decode_task.cancel()
            raise
        if decode_task.exception() is not None:
            prefill_task.cancel()
            raise decode_task.exception()  # type: ignore[misc]
        result = decode_task.result()
        if not prefill_task.done():
            result.prefill_task = prefill_task  # settled (or cancelled) when the answer is over
        return result

    async def _discard(self, result: DecodeResult) -> None:
        await self.finish(result)

    def _instance_span(self, ex: Exchange, inst: Instance, name: str) -> trace.Span:
        return self.tracer.start_span(
            name,
            context=trace.set_span_in_context(ex.span),
            kind=SpanKind.CLIENT,
            attributes={
                "voltana.instance.id": inst.instance_id,
                "voltana.instance.phase": inst.phase.value,
                "server.address": inst.url,
                "voltana.request.id": ex.request_id,
            },
        )

    async def _call(self, ex: Exchange, inst: Instance, body: dict[str, Any]) -> tuple[bytes, str]:
        """POST ``body`` to ``inst`` and return its whole answer (content, content type) when it is a 2xx."""
        span = self._instance_span(ex, inst, f"voltana.router.{inst.phase.value}")
        headers = inject_headers(span, dict(ex.headers))
        pending = ex.parsed.input_tokens if inst.phase is Phase.PREFILL else 0
        self.registry.acquire(inst, pending)
        start = time.perf_counter()
        try:
            async with self.session.post(
                inst.url + ex.parsed.path, data=json.dumps(body), headers=headers
            ) as answer:
                content = await answer.read()
                status = answer.status
                content_type = answer.headers.get("content-type", "application/json")
        except TimeoutError:
            span.set_status(Status(StatusCode.ERROR, "timeout"))
            raise UpstreamError(
                inst.instance_id, f"timed out (no answer within {self.request_timeout_s:g} s)"
            ) from None
        except aiohttp.ClientError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise UpstreamError(inst.instance_id, f"{type(exc).__name__}: {exc}") from None
        finally:
            ex.upstream_s += time.perf_counter() - start
            self.registry.release(inst, pending)
            span.end()
        if status >= 500:
            raise UpstreamError(inst.instance_id, f"HTTP {status}: {content[:200].decode(errors='replace')}")
        if status >= 400:
            raise BackendRejected(status, content, content_type)
        self.registry.record_success(inst)
        return content, content_type

    async def _call_json(self, ex: Exchange, inst: Instance, body: dict[str, Any]) -> dict[str, Any]:
        """:meth:`_call` for an answer that must be a JSON object (a prefill's)."""
        content, _ = await self._call(ex, inst, body)
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise UpstreamError(inst.instance_id, "answer is not a JSON object")
        return answer

    async def _decode(self, ex: Exchange, inst: Instance, body: dict[str, Any]) -> DecodeResult:
        if not ex.parsed.stream:
            content, content_type = await self._call(ex, inst, body)
            return DecodeResult(inst, content=content, content_type=content_type)
        span = self._instance_span(ex, inst, "voltana.router.decode")
        headers = inject_headers(span, dict(ex.headers))
        self.registry.acquire(inst)
        result = DecodeResult(inst, span=span)
        start = time.perf_counter()
        try:
            response = await self.session.post(
                inst.url + ex.parsed.path, data=json.dumps(body), headers=headers
            )
            result.response = response
            if response.status >= 400:
                content = await response.read()
                if response.status >= 500:
                    raise UpstreamError(inst.instance_id, f"HTTP {response.status}: {content[:200]!r}")
                raise BackendRejected(
                    response.status, content, response.headers.get("content-type", "application/json")
                )
            result.events = _complete_events(response.content.iter_any())
            result.first_events = await anext(result.events, b"")
            if not result.first_events:
                raise UpstreamError(inst.instance_id, "stream ended before any event")
        except BaseException as exc:
            await self.finish(result)
            if isinstance(exc, TimeoutError):
                raise UpstreamError(inst.instance_id, "timed out before the first event") from None
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamError(inst.instance_id, f"{type(exc).__name__}: {exc}") from None
            raise
        finally:
            ex.upstream_s += time.perf_counter() - start
        self.registry.record_success(inst)
        return result

    async def stream(
        self, ex: Exchange, result: DecodeResult, on_end: Callable[[], None]
    ) -> AsyncIterator[bytes]:
        """The client's event stream: the first event(s), then the rest; a mid-stream failure ends it with an
        OpenAI error event. Cancellation (client gone) closes the engine stream, so the engine aborts it.
        """
        try:
            yield result.first_events
            assert result.events is not None
            try:
                async for chunk in result.events:
                    yield chunk
                result.complete = True
            except (aiohttp.ClientError, TimeoutError) as exc:
                inst = result.instance
                self.registry.record_failure(inst, f"stream broke: {type(exc).__name__}")
                self.metrics.errors.labels("upstream").inc()
                message = f"decode instance {inst.instance_id} failed mid-stream ({type(exc).__name__}); " + (
                    "the output above is incomplete, retry the request"
                )
                log.warning("request %s: %s", ex.request_id, message)
                if result.span is not None:
                    result.span.set_status(Status(StatusCode.ERROR, message))
                payload = error_body(502, message, code="upstream_stream_broken")
                yield b"data: " + json.dumps(payload).encode() + EVENT_END
        finally:
            await self.finish(result)
            on_end()

    async def finish(self, result: DecodeResult) -> None:
        """Close the engine stream, release the decode instance, settle a pending SGLang prefill (once).

        A stream read to its end goes back to the connection pool; any other is closed, which makes the
        engine abort the request.
        """
        if result.released:
            return
        result.released = True
        if result.response is not None:
            if result.complete:
                result.response.release()
            else:
                result.response.close()
        if result.span is not None:
            self.registry.release(result.instance)
            result.span.end()
        if result.prefill_task is not None:
            task = result.prefill_task
            if not task.done() and result.complete:  # its answer is due: give it a moment
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
            if not task.done():
                task.cancel()  # client gone or stream broken: stop the prefill too
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.info("SGLang prefill finished with an error after decode: %s", task.exception())


async def _cancel(task: asyncio.Task[DecodeResult], cleanup: Callable[[DecodeResult], Any]) -> None:
    """Cancel ``task``; if it already produced a result, clean that result up."""
    if not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            return
    if not task.cancelled() and task.exception() is None:
        await cleanup(task.result())


async def _complete_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Regroup a byte stream into whole server-sent events (each ending in a blank line)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        cut = pending.rfind(EVENT_END)
        if cut >= 0:
            yield pending[: cut + 2]
            pending = pending[cut + 2 :]
    if pending:
        yield pending
