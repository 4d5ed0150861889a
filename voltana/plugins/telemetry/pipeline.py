"""The process's telemetry pipeline: OpenTelemetry providers, instruments, request spans, Prometheus text.

Per iteration only :class:`~voltana.plugins.telemetry.aggregates.Aggregates` is updated; observable
instruments read it when a reader collects (background thread or a scrape). A finished request is queued;
a worker thread records its span (explicit start/end times) and request metrics, and a BatchSpanProcessor
exports spans in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from voltana import __version__
from voltana.core.config import TelemetryConfig
from voltana.core.types import IterationRecord, RequestRecord, Slo
from voltana.plugins.telemetry import names
from voltana.plugins.telemetry.aggregates import Aggregates, InstanceAggregate
from voltana.plugins.telemetry.context import TraceContextRegistry, trace_headers_from
from voltana.plugins.telemetry.exporters import ExportHealth, build_exporters, describe_target
from voltana.plugins.telemetry.prometheus import PrometheusExposition
from voltana.plugins.telemetry.spans import request_metric_attributes, request_span_attributes
from voltana.plugins.telemetry.worker import BackgroundQueue

logger = logging.getLogger("voltana.telemetry")
SCOPE = "voltana"
_PROPAGATOR = TraceContextTextMapPropagator()
UNIX_TIME_FLOOR_S = 1e9
SHUTDOWN_GRACE_S = 1.0
"""What :meth:`Telemetry.shutdown` may take beyond ``export_timeout_s`` (thread start, queue drain, joins)."""
"""Timestamps from here on (September 2001) are taken as Unix time; no monotonic clock's uptime gets there."""


@dataclass
class RequestTrace:
    """The router's span of one request and the headers to forward to its prefill and decode instances."""

    span: trace.Span
    headers: dict[str, str] = field(default_factory=dict)


class Telemetry:
    """Traces and metrics of one process (all its instances), built from ``[telemetry]``.

    Record timestamps become span times in Unix time: a value of at least ``UNIX_TIME_FLOOR_S`` already is
    one (vLLM's ``arrival_time`` is ``time.time()``); smaller ones (a monotonic clock counts from boot,
    simulated time from 0) get ``epoch_offset_s`` added, by default ``time.time() - time.monotonic()``.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        slo: Slo,
        *,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] = (),
        epoch_offset_s: float | None = None,
        trace_contexts: TraceContextRegistry | None = None,
    ) -> None:
        self.config = config
        self.slo = slo
        self.epoch_offset_s = time.time() - time.monotonic() if epoch_offset_s is None else epoch_offset_s
        self.health = ExportHealth(describe_target(config))
        self.aggregates = Aggregates()
        self.trace_contexts = trace_contexts if trace_contexts is not None else TraceContextRegistry()
        configured_spans, configured_metrics = build_exporters(config, self.health)
        resource = Resource.create(
            {
                "service.name": config.service_name,
                "service.version": __version__,
                **config.resource_attributes,
            }
        )
        self.tracer_provider = TracerProvider(resource=resource)
        for exporter in (configured_spans, span_exporter):
            if exporter is not None:
                self.tracer_provider.add_span_processor(
                    BatchSpanProcessor(exporter, export_timeout_millis=int(config.export_timeout_s * 1000))
                )
        readers = list(metric_readers)
        if configured_metrics is not None:
            readers.append(
                PeriodicExportingMetricReader(
                    configured_metrics,
                    export_interval_millis=config.export_interval_s * 1000,
                    export_timeout_millis=config.export_timeout_s * 1000,
                )
            )
        self._prometheus: PrometheusExposition | None = None
        if config.prometheus or config.prometheus_port is not None:
            self._prometheus = PrometheusExposition()
            readers.append(self._prometheus.reader)
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.tracer = self.tracer_provider.get_tracer(SCOPE, __version__)
        self._create_instruments()
        self.requests = BackgroundQueue(self.record_request_now, what="requests")
        if self._prometheus is not None and config.prometheus_port is not None:
            try:
                self._prometheus.serve(config.prometheus_port)
            except OSError as exc:  # e.g. another process of this engine (a TP rank) serves it already
                logger.warning(
                    "telemetry: cannot serve /metrics on 127.0.0.1:%d (%s); other exports go on",
                    config.prometheus_port,
                    exc.strerror or exc,
                )

    # --- hot path ---------------------------------------------------------------------------------------
    def observe_iteration(self, record: IterationRecord) -> None:
        """Fold a finished iteration into the aggregates (microseconds; no I/O, no locks)."""
        self.aggregates.add(record)

    # --- per request ------------------------------------------------------------------------------------
    def bind_trace_context(self, request_id: str, headers: Mapping[str, str] | None) -> None:
        """Remember the W3C trace headers a request arrived with, for its span when it finishes."""
        self.trace_contexts.bind(request_id, headers)

    def observe_request(self, record: RequestRecord) -> None:
        """Queue one finished request phase; its span and metrics are built on the worker thread."""
        self.requests.put(record)

    def process_pending(self) -> int:
        """Build the spans and metrics of all queued requests now, in the calling thread; returns how many."""
        return self.requests.drain()

    def record_request_now(self, record: RequestRecord) -> None:
        """Record one request phase's span and metrics in the calling thread (what the worker does)."""
        carrier = trace_headers_from(record.trace_headers) or self.trace_contexts.get(record.request_id)
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        attributes = request_span_attributes(record, self.slo)
        span = self.tracer.start_span(
            f"{record.phase.value} {record.model}".rstrip(),
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=self._epoch_ns(record.arrival_time_s),
        )
        if record.first_token_time_s is not None:
            span.add_event(names.FIRST_TOKEN_EVENT, timestamp=self._epoch_ns(record.first_token_time_s))
        span.end(end_time=self._epoch_ns(max(record.finish_time_s, record.arrival_time_s)))
        self._record_request_metrics(record, attributes)

    def _record_request_metrics(self, record: RequestRecord, span_attributes: Mapping[str, Any]) -> None:
        metric_attributes = request_metric_attributes(record)
        self._request_duration.record(
            max(record.finish_time_s - record.arrival_time_s, 0.0), metric_attributes
        )
        self._request_energy.record(record.energy_j, metric_attributes)
        ttft_s = span_attributes.get(names.TTFT_OBSERVED_S)
        if ttft_s is not None:
            self._ttft.record(ttft_s, metric_attributes)
            met = bool(span_attributes[names.TTFT_SLO_MET])
            self._slo_requests.add(1, {**metric_attributes, names.SLO_NAME: "ttft", names.SLO_MET: met})
        itl_s = span_attributes.get(names.ITL_OBSERVED_S)
        if itl_s is not None:
            self._tpot.record(itl_s, metric_attributes)
            met = bool(span_attributes[names.ITL_SLO_MET])
            self._slo_requests.add(1, {**metric_attributes, names.SLO_NAME: "itl", names.SLO_MET: met})

    @contextmanager
    def start_request_trace(
        self, request_id: str, model: str = "", incoming_headers: Mapping[str, str] | None = None
    ) -> Iterator[RequestTrace]:
        """The router's span around one P/D request; forward ``.headers`` to both the P and the D instance.

        Joins the caller's trace when ``incoming_headers`` carry a ``traceparent``.
        """
        carrier = trace_headers_from(incoming_headers)
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        attributes: dict[str, Any] = {
            names.REQUEST_ID: request_id,
            names.GEN_AI_OPERATION_NAME: names.OPERATION_TEXT_COMPLETION,
        }
        if model:
            attributes[names.GEN_AI_REQUEST_MODEL] = model
        name = f"route {model}".rstrip()
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes, end_on_exit=True
        ) as span:
            headers: dict[str, str] = {}
            _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
            yield RequestTrace(span=span, headers=headers)

    # --- export -----------------------------------------------------------------------------------------
    def prometheus_text(self) -> str:
        """Current metrics in Prometheus text format ('' unless ``telemetry.prometheus`` is on)."""
        if self._prometheus is None:
            return ""
        self.process_pending()
        return self._prometheus.text()

    @property
    def prometheus_exposition(self) -> PrometheusExposition | None:
        """Reader, text and endpoint of Prometheus (None unless ``telemetry.prometheus``/``_port`` is set)."""
        return self._prometheus

    @property
    def prometheus_port(self) -> int | None:
        """The port ``/metrics`` is served on, when ``telemetry.prometheus_port`` is set."""
        return self._prometheus.port if self._prometheus is not None else None

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued now (tests, shutdown); bounded by ``timeout_s``."""
        millis = int(timeout_s * 1000)
        self.process_pending()
        spans_ok = self.tracer_provider.force_flush(millis)
        metrics_ok = self.meter_provider.force_flush(millis)
        return bool(spans_ok and metrics_ok)

    def shutdown(self) -> None:
        """Flush and stop the exporters and the ``/metrics`` endpoint; never raises.

        Bounded by ``export_timeout_s + SHUTDOWN_GRACE_S`` in all: the span and metric providers flush in
        parallel, each on a daemon thread; one still stuck on a collector that never answers is left behind
        (its data is dropped, the process may exit), instead of each export attempt adding its own timeout.
        """
        deadline_s = time.monotonic() + self.config.export_timeout_s + SHUTDOWN_GRACE_S
        if self._prometheus is not None:
            self._prometheus.close()
        self.requests.close(timeout_s=min(1.0, self.config.export_timeout_s))
        timeout_ms = self.config.export_timeout_s * 1000
        stops = {
            "spans": self.tracer_provider.shutdown,
            "metrics": lambda: self.meter_provider.shutdown(timeout_millis=timeout_ms),
        }
        threads = [
            threading.Thread(
                target=_stop_quietly, args=(what, stop), name=f"voltana-otel-stop-{what}", daemon=True
            )
            for what, stop in stops.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline_s - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            logger.info(
                "telemetry: shutdown stopped waiting after %.1f s (%s); unexported data is dropped",
                self.config.export_timeout_s + SHUTDOWN_GRACE_S,
                ", ".join(stuck),
            )

    # --- internals --------------------------------------------------------------------------------------
    def _epoch_ns(self, t_s: float) -> int:
        unix_s = t_s if t_s >= UNIX_TIME_FLOOR_S else t_s + self.epoch_offset_s
        return int(unix_s * 1e9)

    def _create_instruments(self) -> None:
        meter = self.meter_provider.get_meter(SCOPE, __version__)
        self._ttft = meter.create_histogram(
            names.TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=names.TTFT_BUCKETS_S,
        )
        self._tpot = meter.create_histogram(
            names.TIME_PER_OUTPUT_TOKEN,
            unit="s",
            description="Time per output token generated after the first token for successful responses.",
            explicit_bucket_boundaries_advisory=names.TPOT_BUCKETS_S,
        )
        self._request_duration = meter.create_histogram(
            names.REQUEST_DURATION,
            unit="s",
            description="Generative AI server request duration on this instance (arrival to last token).",
            explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS_S,
        )
        self._request_energy = meter.create_histogram(
            names.REQUEST_ENERGY,
            unit="J",
            description="GPU energy attributed to one request's phase on this instance.",
            explicit_bucket_boundaries_advisory=names.REQUEST_ENERGY_BUCKETS_J,
        )
        self._slo_requests = meter.create_counter(
            names.SLO_REQUESTS,
            unit="{request}",
            description="Finished request phases, by SLO and whether met.",
        )
        observables: tuple[tuple[str, str, str, bool, Any], ...] = (
            (names.HW_ENERGY, "J", "Energy consumed by the instance's GPUs in iterations.", True, _energy),
            (names.HW_POWER, "W", "Mean power of the instance's GPUs in its last iteration.", False, _power),
            (names.SM_CLOCK, "MHz", "SM clock applied in the instance's last iteration.", False, _clock),
            (names.CLOCK_CHANGES, "{change}", "Iterations whose applied clock differs from the last.", True,
             _changes),
            (names.CLOCK_RESIDENCY, "s", "Iteration time spent at each SM clock.", True, _residency),
            (names.DECISIONS, "{decision}", "Clock decisions by policy and reason.", True, _decisions),
            (names.ITERATIONS, "{iteration}", "Finished iterations.", True, _iterations),
            (names.PREDICTOR_ABS_ERROR, "s", "Sum of |predicted - measured| iteration latency.", True,
             _abs_error),
            (names.PREDICTOR_PREDICTIONS, "{prediction}", "Iterations with a latency prediction.", True,
             _predictions),
            (names.PREDICTOR_RELATIVE_ERROR, "1", "Moving mean of |predicted - measured| / measured.", False,
             _relative_error),
        )  # fmt: skip
        for name, unit, description, is_counter, observe in observables:
            callback = self._callback(observe)
            if is_counter:
                meter.create_observable_counter(name, [callback], unit=unit, description=description)
            else:
                meter.create_observable_gauge(name, [callback], unit=unit, description=description)

    def _callback(self, observe: Any) -> Any:
        aggregates = self.aggregates

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations: list[Observation] = []
            for aggregate in aggregates.snapshot():
                observations.extend(observe(aggregate, _instance_attributes(aggregate)))
            return observations

        return callback


def _instance_attributes(aggregate: InstanceAggregate) -> dict[str, Any]:
    return {
        names.INSTANCE_ID: aggregate.instance_id,
        names.PHASE: aggregate.phase.value,
        names.ENERGY_SOURCE: aggregate.energy_source.value,
    }


def _hw_attributes(aggregate: InstanceAggregate, base: dict[str, Any]) -> dict[str, Any]:
    # One instance = its TP group of GPUs; per-GPU ids need device counters (see docs/guides/telemetry.md).
    return {**base, names.HW_ID: aggregate.instance_id, names.HW_TYPE: names.HW_TYPE_GPU}


def _energy(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [Observation(a.energy_j, _hw_attributes(a, base))]


def _power(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [] if a.last_power_w is None else [Observation(a.last_power_w, _hw_attributes(a, base))]


def _clock(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [] if a.applied_clock_mhz is None else [Observation(a.applied_clock_mhz, base)]


def _changes(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [Observation(a.clock_changes, base)]


def _residency(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [Observation(s, {**base, names.CLOCK_MHZ: mhz}) for mhz, s in sorted(a.residency_s.copy().items())]


def _decisions(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [
        Observation(n, {**base, names.DECISION_REASON: reason, names.POLICY: policy})
        for (reason, policy), n in a.decisions.copy().items()
    ]


def _iterations(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [Observation(a.iterations, base)]


def _abs_error(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [Observation(a.predictor_abs_error_s, base)]


def _predictions(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    return [Observation(a.predictions, base)]


def _relative_error(a: InstanceAggregate, base: dict[str, Any]) -> list[Observation]:
    error = a.predictor_relative_error
    return [] if error is None else [Observation(error, base)]


def _stop_quietly(what: str, stop: Any) -> None:
    """Run one provider's shutdown; an exception is logged at DEBUG, never raised."""
    try:
        stop()
    except Exception as exc:
        logger.debug("telemetry: shutdown of the %s provider failed: %s", what, exc)
