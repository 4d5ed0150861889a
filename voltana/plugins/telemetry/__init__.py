"""Telemetry plugin: energy per request and per phase as OpenTelemetry spans and metrics, and Prometheus.

Off until :func:`configure_telemetry` is called with ``[telemetry]`` exporter ``console``/``otlp`` (or
``prometheus = true``); the engine runtime, router and simulator call it once at start. Then:

- ``voltana_iteration_finished`` folds each iteration into per-instance sums (the hot path: no I/O);
- ``voltana_request_finished`` records one span per request phase, joined to the request's trace through
  the W3C headers on ``RequestRecord.trace_headers`` or bound earlier with :func:`bind_trace_context`;
- exports run on background threads; an unreachable endpoint costs one warning, never the serving path.

The router wraps each request in :func:`start_request_trace` and forwards its headers to both instances.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from voltana.core.contexts import DoctorCheck
from voltana.core.hookspecs import hookimpl
from voltana.core.types import IterationRecord, RequestRecord, Slo
from voltana.plugins.telemetry.context import TraceContextRegistry, new_traceparent, trace_headers_from

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from voltana.core.config import VoltanaConfig
    from voltana.plugins.telemetry.pipeline import Telemetry

logger = logging.getLogger("voltana.telemetry")
_lock = threading.Lock()
_active: Telemetry | None = None
_failed_once = False
_pending_contexts = TraceContextRegistry()
"""Trace headers bound before telemetry is configured (or while it is off) still reach a later pipeline."""


def telemetry_wanted(config: VoltanaConfig) -> bool:
    """Whether ``[telemetry]`` asks for anything (an exporter, or Prometheus exposition)."""
    section = config.telemetry
    return section.exporter != "none" or section.prometheus or section.prometheus_port is not None


def configure_telemetry(
    config: VoltanaConfig,
    *,
    span_exporter: SpanExporter | None = None,
    metric_readers: tuple[MetricReader, ...] = (),
    epoch_offset_s: float | None = None,
    force: bool = False,
) -> Telemetry | None:
    """Start this process's telemetry from ``config`` (idempotent: a second call returns the running one).

    ``span_exporter``/``metric_readers`` add test or custom sinks (and enable telemetry by themselves);
    ``force`` starts it even when ``[telemetry]`` asks for nothing. Raises ``ConfigError`` (one line) when
    the OTLP exporter package is missing.
    """
    global _active
    wanted = telemetry_wanted(config) or force or span_exporter is not None or bool(metric_readers)
    with _lock:
        if _active is not None or not wanted:
            return _active
        # the OTel SDK pipeline loads only when telemetry is on (this plugin is in every engine process)
        from voltana.plugins.telemetry.pipeline import Telemetry  # noqa: PLC0415

        _active = Telemetry(
            config.telemetry,
            Slo(config.slo.ttft_s, config.slo.itl_s),
            span_exporter=span_exporter,
            metric_readers=metric_readers,
            epoch_offset_s=epoch_offset_s,
            trace_contexts=_pending_contexts,
        )
        return _active


def active_telemetry() -> Telemetry | None:
    """The running pipeline, or None when telemetry is off."""
    return _active


def shutdown_telemetry() -> None:
    """Flush and stop the running pipeline (bounded by ``telemetry.export_timeout_s``); idempotent."""
    global _active, _failed_once
    with _lock:
        telemetry, _active = _active, None
        _failed_once = False
        _pending_contexts.clear()
    if telemetry is not None:
        telemetry.shutdown()


def bind_trace_context(request_id: str, headers: Mapping[str, str] | None) -> None:
    """Remember the ``traceparent``/``tracestate`` a request arrived with, for its span when it finishes."""
    _pending_contexts.bind(request_id, headers)


@contextmanager
def start_request_trace(
    request_id: str, model: str = "", incoming_headers: Mapping[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """The router's side: yields the W3C headers to forward to the request's prefill AND decode instance.

    With telemetry running, a router span wraps the block (child of the incoming ``traceparent``, else of the
    current span) and the headers point at it; without, the incoming trace headers are passed on, or a fresh
    sampled ``traceparent`` is made: both phases share a trace either way.
    """
    telemetry = _active
    if telemetry is None:
        yield trace_headers_from(incoming_headers) or {"traceparent": new_traceparent()}
        return
    with telemetry.start_request_trace(request_id, model, incoming_headers) as request_trace:
        yield request_trace.headers


def prometheus_text() -> str:
    """The current metrics in Prometheus text format ('' when Prometheus exposition is off)."""
    telemetry = _active
    return telemetry.prometheus_text() if telemetry is not None else ""


def _report_failure(where: str, exc: Exception) -> None:
    global _failed_once
    if not _failed_once:
        _failed_once = True
        logger.warning("telemetry: %s failed (%s: %s); serving continues", where, type(exc).__name__, exc)


@hookimpl
def voltana_iteration_finished(record: IterationRecord) -> None:
    telemetry = _active
    if telemetry is None:
        return
    try:
        telemetry.observe_iteration(record)
    except Exception as exc:
        _report_failure("recording an iteration", exc)


@hookimpl
def voltana_request_finished(record: RequestRecord) -> None:
    telemetry = _active
    if telemetry is None:
        return
    try:
        telemetry.observe_request(record)
    except Exception as exc:
        _report_failure("recording a request", exc)


@hookimpl
def voltana_doctor_checks(config: Any) -> list[DoctorCheck]:
    section = getattr(config, "telemetry", None)
    if section is None:
        return []
    if section.exporter != "otlp":
        return [DoctorCheck("telemetry", "exporter", None, section.exporter)]
    module = f"opentelemetry.exporter.otlp.proto.{section.protocol}.trace_exporter"
    try:
        __import__(module)
    except ImportError:
        return [
            DoctorCheck(
                "telemetry",
                "exporter",
                False,
                f"otlp/{section.protocol}: {module} missing",
                "pip install 'voltana[otlp]'",
            )
        ]
    return [
        DoctorCheck(
            "telemetry", "exporter", True, f"otlp/{section.protocol} -> {section.endpoint or 'OTEL env'}"
        )
    ]
