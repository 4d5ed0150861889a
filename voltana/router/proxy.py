"""Forwarding one client request through a (prefill, decode) pair, with retries, for vLLM and SGLang.

vLLM: the prefill instance gets the request with ``max_tokens=1`` (and, NIXL-style, ``kv_transfer_params =
{"do_remote_decode": true}``); the ``kv_transfer_params`` it returns are copied into the decode request.
With a connector that exchanges nothing (shared storage) the prefill answer carries no params and the decode
request goes out unchanged. SGLang: the same request, plus ``bootstrap_host``/``bootstrap_port``/
``bootstrap_room`` (random 63-bit), goes to both instances at once; the answer is streamed from decode.

Engine calls go through one aiohttp session (far cheaper per call than httpx, see ``app.py``).

Retries (at most ``max_retries`` extra attempts): a request that provably never reached an engine (no
connection, nothing written, or a 503 refusal) is retried elsewhere. One that reached an engine which then
failed (a 5xx answer, a connection broken after sending, a timeout) may have made the engine fail: such
"poison" requests get a per-request budget of :data:`MAX_ENGINE_FAILURES` retry, on another instance, and
only while the phase keeps an instance this request never touched, so one request never spreads over every
instance. A decode that dies mid-stream ends the stream with an OpenAI error event, so no request is ever
lost silently.

``max_tokens: 0`` with ``echo: true`` (prompt scoring) is prefill-only work: on vLLM it goes, unchanged, to a
prefill instance alone; on SGLang through the usual pair.

Energy (``router.report_energy``): after the answer, each leg's instance is asked for the request's
joules (``GET /voltana/requests/{X-Request-Id}``, see :data:`ENERGY_PATH`); the known ones go into the final
``usage`` as ``voltana_energy`` (:func:`energy_usage`), absent when no engine knows.
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
import yarl
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from voltana.core.types import Phase, RouteRequest
from voltana.router.choice import InstanceChooser, NoInstanceError
from voltana.router.errors import RouterError, UpstreamError, error_body
from voltana.router.instances import Instance, InstanceRegistry
from voltana.router.observability import RouterMetrics, inject_headers
from voltana.router.polling import Backend
from voltana.router.request_ids import NOT_YET, RECORD_PATH, forwarded, record_path
from voltana.router.validation import ParsedRequest

log = logging.getLogger("voltana.router")
FORWARDED_HEADERS = ("authorization",)
EVENT_END = b"\n\n"
MAX_ENGINE_FAILURES = 1
"""Retries a request gets after engines failed while working on it (poison-request budget)."""
ENERGY_PATH = RECORD_PATH
"""Engine endpoint of one request's record (404 when unknown); see :func:`energy_url`."""
ENERGY_LOOKUP_TIMEOUT_S = 1.0
ENERGY_RECORD_LAG_S = 0.3
"""How late an engine's record may be: vLLM publishes them with its state, every 0.25 s under load."""
REFUSED_RETRY_AFTER_S = 1
"""``Retry-After`` (s) when no engine tried took the request (down or 503), or an engine's 429 had none."""
USAGE_ENERGY_FIELD = "voltana_energy"
"""The ``usage`` extension: ``{"prefill_j": .., "decode_j": .., "total_j": ..}`` (known phases only)."""


@dataclass(slots=True)
class SendState:
    """Per engine call: whether aiohttp wrote the request headers (it may have reached the engine)."""

    headers_sent: bool = False


async def _on_headers_sent(session: Any, context: Any, params: Any) -> None:
    state = context.trace_request_ctx
    if isinstance(state, SendState):
        state.headers_sent = True


def send_trace_config() -> aiohttp.TraceConfig:
    """The aiohttp trace hook that fills :class:`SendState` (pass it in ``trace_configs``)."""
    config = aiohttp.TraceConfig()
    config.on_request_headers_sent.append(_on_headers_sent)
    return config


def client_failure(inst: Instance, exc: BaseException, sent: SendState, what: str = "") -> UpstreamError:
    """An aiohttp failure of a call to ``inst`` as an :class:`UpstreamError`: did it reach the engine?"""
    label = f"{what}{type(exc).__name__}: {exc}" if str(exc) else f"{what}{type(exc).__name__}"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return UpstreamError(inst.instance_id, label, reached=False)
    if not sent.headers_sent:  # a pooled connection the engine had closed: nothing was written
        return UpstreamError(inst.instance_id, label, reached=False, instance_fault=False)
    return UpstreamError(inst.instance_id, label)


def status_failure(inst: Instance, status: int, content: bytes) -> UpstreamError:
    """A 5xx answer: 503 is a refusal (the engine did not work on it); any other may be the request's."""
    message = f"HTTP {status}: {content[:200].decode(errors='replace')}"
    return UpstreamError(inst.instance_id, message, status=status, reached=status != 503)


def energy_url(base: str, request_id: str) -> yarl.URL:
    """The engine URL of ``request_id``'s record (:func:`voltana.router.request_ids.record_path`), sent as
    is: a client's id ``../../v1/models`` or ``dup1?`` never becomes another path or a query."""
    return yarl.URL(base + record_path(request_id), encoded=True)


def energy_usage(joules: dict[Phase, float | None]) -> dict[str, float] | None:
    """``usage.voltana_energy``: ``<phase>_j`` for each phase an engine reported, ``total_j`` when all did;
    None when none did (the field is left out: never a guess)."""
    known = {f"{phase.value}_j": j for phase, j in joules.items() if j is not None}
    if not known:
        return None
    if len(known) == len(joules):
        known["total_j"] = sum(j for j in joules.values() if j is not None)
    return known


class BackendRejected(Exception):  # noqa: N818 - an answer to pass through, not a failure
    """An engine answered 4xx: the request itself is at fault; passed through to the client as is."""

    def __init__(
        self, status: int, content: bytes, content_type: str, retry_after: str | None = None
    ) -> None:
        super().__init__(f"engine rejected the request with {status}")
        self.status = status
        self.content = content
        self.content_type = content_type
        self.retry_after = retry_after or (str(REFUSED_RETRY_AFTER_S) if status == 429 else None)
        """``Retry-After`` to pass on: the engine's, or :data:`REFUSED_RETRY_AFTER_S` for a 429 without."""


@dataclass(slots=True)
class Exchange:
    """Per-request bookkeeping: id, headers to forward, time spent waiting on engines (s)."""

    request_id: str
    parsed: ParsedRequest
    headers: dict[str, str]
    span: trace.Span
    upstream_s: float = 0.0
    attempts: list[str] = field(default_factory=list)
    legs: dict[Phase, Instance] = field(default_factory=dict)
    """The instance that served each phase of the attempt that succeeded."""


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
        report_energy: bool = False,
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
        self.report_energy = report_energy

    def new_exchange(self, parsed: ParsedRequest, incoming: dict[str, str], span: trace.Span) -> Exchange:
        """Bookkeeping for one request; keeps the client's ``X-Request-Id`` when it sent one."""
        request_id = incoming.get("x-request-id") or f"voltana-{uuid.uuid4().hex}"
        headers = {"x-request-id": forwarded(request_id), "content-type": "application/json"}
        for name in FORWARDED_HEADERS:
            if name in incoming:
                headers[name] = incoming[name]
        return Exchange(request_id, parsed, headers, span)

    async def run(self, ex: Exchange) -> DecodeResult:
        """Serve ``ex`` on a (P, D) pair, retrying as the module says; raises RouterError/BackendRejected."""
        route = RouteRequest(
            ex.request_id, ex.parsed.input_tokens, ex.parsed.max_tokens or 0, time.monotonic()
        )
        excluded: dict[Phase, set[str]] = {Phase.PREFILL: set(), Phase.DECODE: set()}
        engine_failures = 0
        refusals = 0  # attempts no engine worked on: never reached one, or a 503 answer
        for _ in range(1 + self.max_retries):
            ex.legs.clear()
            try:
                if self.backend == "vllm":
                    if ex.parsed.prompt_only:
                        return await self._attempt_prompt_only(ex, route, excluded)
                    return await self._attempt_vllm(ex, route, excluded)
                return await self._attempt_sglang(ex, route, excluded)
            except UpstreamError as exc:
                failed = self.registry.by_id[exc.instance_id]
                ex.attempts.append(str(exc))
                refusals += not exc.reached
                self.metrics.errors.labels("upstream").inc()
                if exc.instance_fault:
                    self.registry.record_failure(failed, str(exc))
                    excluded[failed.phase].add(failed.instance_id)
                if exc.reached:
                    engine_failures += 1
                    untouched = [
                        i
                        for i in self.registry.usable(failed.phase)
                        if i.instance_id not in excluded[failed.phase]
                    ]
                    if engine_failures > MAX_ENGINE_FAILURES or len(untouched) < 2:
                        self.metrics.errors.labels("engine_failed_request").inc()
                        raise RouterError(
                            502,
                            f"the engine failed on this request ({'; '.join(ex.attempts)}); not retried on "
                            "another instance, since a request that makes an engine fail may do it again",
                            code="engine_failed",
                        ) from None
                log.info("request %s: %s; retrying elsewhere", ex.request_id, exc)
            except NoInstanceError as exc:
                if ex.attempts:
                    break  # every instance that could serve it failed: report those failures
                retry_after = {"retry-after": str(self.registry.retry_after_s(exc.phase))}
                if exc.saturated:
                    self.metrics.errors.labels("saturated").inc()
                    raise RouterError(
                        429, str(exc), code="overloaded", headers={"retry-after": "1"}
                    ) from None
                self.metrics.errors.labels("no_instance").inc()
                raise RouterError(503, str(exc), code="no_instance", headers=retry_after) from None
        if refusals == len(ex.attempts):  # no engine worked on it (down, busy, starting): retry later
            raise RouterError(
                503,
                f"no instance tried could take the request ({'; '.join(ex.attempts)}); retry later",
                code="engines_unavailable",
                headers={"retry-after": str(REFUSED_RETRY_AFTER_S)},
            )
        raise RouterError(
            502,
            f"request failed on {len(ex.attempts)} attempts: {'; '.join(ex.attempts)}",
            code="upstream_failed",
        )

    async def _attempt_prompt_only(
        self, ex: Exchange, route: RouteRequest, excluded: dict[Phase, set[str]]
    ) -> DecodeResult:
        """vLLM prompt scoring: the whole request on one prefill instance (no KV handed to a decode)."""
        prefill = self._choose(Phase.PREFILL, route, excluded)
        result = await self._decode(ex, prefill, ex.parsed.body)
        ex.legs[Phase.PREFILL] = prefill
        return result

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
        ex.legs[Phase.PREFILL] = prefill
        body = ex.parsed.body
        params = answer.get("kv_transfer_params")
        if params:
            body = dict(body, kv_transfer_params=params)
        result = await self._decode(ex, decode, body)
        ex.legs[Phase.DECODE] = decode
        return result

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
        ex.legs[Phase.PREFILL] = prefill
        ex.legs[Phase.DECODE] = decode
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
        sent = SendState()
        start = time.perf_counter()
        try:
            async with self.session.post(
                inst.url + ex.parsed.path, data=json.dumps(body), headers=headers, trace_request_ctx=sent
            ) as answer:
                content = await answer.read()
                status = answer.status
                content_type = answer.headers.get("content-type", "application/json")
                retry_after = answer.headers.get("retry-after")
        except aiohttp.ConnectionTimeoutError as exc:
            span.set_status(Status(StatusCode.ERROR, "connect timeout"))
            raise client_failure(inst, exc, sent) from None
        except TimeoutError:
            span.set_status(Status(StatusCode.ERROR, "timeout"))
            raise UpstreamError(
                inst.instance_id, f"timed out (no answer within {self.request_timeout_s:g} s)"
            ) from None
        except aiohttp.ClientError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise client_failure(inst, exc, sent) from None
        finally:
            ex.upstream_s += time.perf_counter() - start
            self.registry.release(inst, pending)
            span.end()
        if status >= 500:
            raise status_failure(inst, status, content)
        if status >= 400:
            raise BackendRejected(status, content, content_type, retry_after)
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
        sent = SendState()
        start = time.perf_counter()
        try:
            response = await self.session.post(
                inst.url + ex.parsed.path, data=json.dumps(body), headers=headers, trace_request_ctx=sent
            )
            result.response = response
            if response.status >= 400:
                content = await response.read()
                if response.status >= 500:
                    raise status_failure(inst, response.status, content)
                raise BackendRejected(
                    response.status,
                    content,
                    response.headers.get("content-type", "application/json"),
                    response.headers.get("retry-after"),
                )
            result.events = _complete_events(response.content.iter_any())
            result.first_events = await anext(result.events, b"")
            if not result.first_events:
                raise UpstreamError(inst.instance_id, "stream ended before any event")
        except BaseException as exc:
            await self.finish(result)
            if isinstance(exc, aiohttp.ClientError):  # also a connect timeout
                raise client_failure(inst, exc, sent) from None
            if isinstance(exc, TimeoutError):
                raise UpstreamError(inst.instance_id, "timed out before the first event") from None
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
        energy = self.report_energy and bool(
            (ex.parsed.body.get("stream_options") or {}).get("include_usage")
        )
        try:
            yield await self._with_energy_event(ex, result.first_events) if energy else result.first_events
            assert result.events is not None
            try:
                async for chunk in result.events:
                    yield await self._with_energy_event(ex, chunk) if energy else chunk
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

    async def request_energy(self, ex: Exchange) -> dict[str, float] | None:
        """``usage.voltana_energy`` of ``ex`` from its legs' engines (None when none reports it)."""
        legs = list(ex.legs.items())
        found = await asyncio.gather(*(self._energy_of(inst, ex.request_id) for _, inst in legs))
        return energy_usage({phase: joules for (phase, _), joules in zip(legs, found, strict=True)})

    async def _energy_of(self, inst: Instance, request_id: str) -> float | None:
        """The joules ``inst`` recorded for ``request_id``; None when it does not say. An engine that serves
        records but has not published this one yet (its 404 says so) is asked once more after
        :data:`ENERGY_RECORD_LAG_S`; one that measures no energy (``reason: not_measured``) is not."""
        url = energy_url(inst.url, request_id)
        timeout = aiohttp.ClientTimeout(total=ENERGY_LOOKUP_TIMEOUT_S)
        record: Any = None
        try:
            for attempt in range(2):
                async with self.session.get(url, timeout=timeout) as answer:
                    if answer.status == 200:
                        record = await answer.json(content_type=None)
                        break
                    if answer.status != 404 or attempt or not _says_not_yet(await answer.read()):
                        return None
                await asyncio.sleep(ENERGY_RECORD_LAG_S)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        joules = record.get("energy_j") if isinstance(record, dict) else None
        if isinstance(joules, int | float) and not isinstance(joules, bool) and joules >= 0:
            return float(joules)
        return None

    async def with_energy(self, ex: Exchange, content: bytes) -> bytes:
        """A whole JSON answer with ``usage.voltana_energy`` added when an engine reported joules."""
        try:
            answer = json.loads(content)
        except ValueError:
            return content
        if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
            return content
        energy = await self.request_energy(ex)
        if energy is None:
            return content
        answer["usage"][USAGE_ENERGY_FIELD] = energy
        return json.dumps(answer).encode()

    async def _with_energy_event(self, ex: Exchange, chunk: bytes) -> bytes:
        """``chunk`` (whole events) with the energy added to the usage event (``choices: []``), if in it."""
        if b'"usage"' not in chunk:
            return chunk
        events = chunk.split(EVENT_END)
        for index, event in enumerate(events):
            if not event.startswith(b"data: {") or b'"usage"' not in event:
                continue
            try:
                payload = json.loads(event[len(b"data: ") :])
            except ValueError:
                continue
            if payload.get("choices") or not isinstance(payload.get("usage"), dict):
                continue
            energy = await self.request_energy(ex)
            if energy is not None:
                payload["usage"][USAGE_ENERGY_FIELD] = energy
                events[index] = b"data: " + json.dumps(payload).encode()
        return EVENT_END.join(events)

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


def _says_not_yet(content: bytes) -> bool:
    """Whether an engine's 404 says the record may still come (``"reason": "not_yet"``)."""
    try:
        answer = json.loads(content)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("reason") == NOT_YET


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
