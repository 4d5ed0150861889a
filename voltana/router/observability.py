"""Router observability: Prometheus metrics (own registry per app) and OpenTelemetry tracing helpers."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TRACER_NAME = "voltana.router"
_ADDED_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_DECISION_BUCKETS_S = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)


class RouterMetrics:
    """The router's Prometheus series; ``render()`` gives the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "voltana_router_requests",
            "Client requests by endpoint and final HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "voltana_router_routing_decisions",
            "Routing decisions by phase, policy and chosen instance",
            ["phase", "policy", "instance"],
            registry=self.registry,
        )
        self.errors = Counter(
            "voltana_router_errors",
            "Errors by kind (upstream, engine_failed_request, saturated, no_instance, client_disconnect, "
            "bad_request, internal)",
            ["kind"],
            registry=self.registry,
        )
        self.added_latency = Histogram(
            "voltana_router_added_latency_seconds",
            "Time the router itself adds to a request (total minus time waiting on engines; to first byte "
            "when streaming)",
            buckets=_ADDED_BUCKETS_S,
            registry=self.registry,
        )
        self.decision_time = Histogram(
            "voltana_router_decision_seconds",
            "Duration of one routing decision (policy hook included)",
            ["phase"],
            buckets=_DECISION_BUCKETS_S,
            registry=self.registry,
        )
        self.prompt_token_counts = Counter(
            "voltana_router_prompt_token_counts",
            "Requests by how their prompt tokens were counted: exact (token ids), tokenizer, estimate",
            ["source"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            "voltana_router_inflight_requests", "Client requests in flight", registry=self.registry
        )
        self.instance_admitted = Gauge(
            "voltana_router_instance_admitted",
            "1 when the instance is routable (not ejected), else 0",
            ["instance", "phase", "url"],
            registry=self.registry,
        )
        self.instance_inflight = Gauge(
            "voltana_router_instance_inflight",
            "Requests the router has in flight on the instance",
            ["instance", "phase"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)


def tracer_for(provider: trace.TracerProvider | None) -> trace.Tracer:
    """A tracer from ``provider`` or the global provider (a no-op one unless telemetry set one up)."""
    return (provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)


def extract_context(headers: Mapping[str, str]) -> Context:
    """The W3C trace context (``traceparent``/``tracestate``) of an incoming request."""
    return propagate.extract(dict(headers))


def inject_headers(span: trace.Span, headers: dict[str, str]) -> dict[str, str]:
    """Add ``span``'s W3C trace context to outgoing ``headers`` (returned for chaining)."""
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return headers
