"""Span and metric exporters built from ``[telemetry]``, wrapped so a failing endpoint costs one warning.

Exports run on the SDK's background threads (BatchSpanProcessor, PeriodicExportingMetricReader). When the
endpoint is down, the wrappers report it once (``logging.WARNING`` on ``voltana.telemetry``), keep the OTLP
library's per-batch retry noise at DEBUG, and say once when exports succeed again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from voltana.core.config import ConfigError, TelemetryConfig

logger = logging.getLogger("voltana.telemetry")

OTLP_LOGGER_NAMES = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)
HTTP_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics"}
SIGNAL_PATHS = ("/v1/traces", "/v1/metrics", "/v1/logs")


_failing_targets: set[str] = set()
"""Export targets in an outage, process-wide: a pipeline re-built (shutdown, configure again) during the same
outage does not warn a second time."""
_outage_lock = threading.Lock()


class ExportHealth:
    """Whether exports currently fail; logs one warning per outage of its target (per process) and one line
    when it ends."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.failures = 0

    def failed(self, signal: str, detail: str = "") -> None:
        """Count a failed export; warn only on the first failure of an outage."""
        with _outage_lock:
            self.failures += 1
            first = self.target not in _failing_targets
            _failing_targets.add(self.target)
        if first:
            reason = f": {detail}" if detail else ""
            logger.warning(
                "telemetry: cannot export %s to %s%s; serving continues, data is dropped until it is back "
                "(further failures are not logged)",
                signal,
                self.target,
                reason,
            )

    def succeeded(self) -> None:
        """Record a successful export; ends an outage."""
        with _outage_lock:
            was_failing = self.target in _failing_targets
            _failing_targets.discard(self.target)
        if was_failing:
            logger.info("telemetry: exports to %s succeed again", self.target)


class GuardedSpanExporter(SpanExporter):
    """A span exporter that never raises and reports failures through :class:`ExportHealth`."""

    def __init__(self, inner: SpanExporter, health: ExportHealth) -> None:
        self.inner = inner
        self.health = health

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            self.health.failed("spans", f"{type(exc).__name__}: {exc}")
            return SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.health.succeeded()
        else:
            self.health.failed("spans")
        return result

    def shutdown(self) -> None:
        try:
            self.inner.shutdown()
        except Exception as exc:
            logger.debug("telemetry: span exporter shutdown failed: %s", exc)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class GuardedMetricExporter(MetricExporter):
    """A metric exporter that never raises and reports failures through :class:`ExportHealth`."""

    def __init__(self, inner: MetricExporter, health: ExportHealth) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.health = health

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            self.health.failed("metrics", f"{type(exc).__name__}: {exc}")
            return MetricExportResult.FAILURE
        if result is MetricExportResult.SUCCESS:
            self.health.succeeded()
        else:
            self.health.failed("metrics")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        try:
            self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            logger.debug("telemetry: metric exporter shutdown failed: %s", exc)


class _DemoteToDebug(logging.Filter):
    """Re-logs the OTLP library's per-batch retry/failure lines at DEBUG on ``voltana.telemetry``."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger.debug("otlp: %s", record.getMessage())
        return False


_demote_filter = _DemoteToDebug()


def quiet_otlp_library_logs() -> None:
    """Install the demoting filter on the OTLP exporters' loggers (idempotent)."""
    for name in OTLP_LOGGER_NAMES:
        library_logger = logging.getLogger(name)
        if _demote_filter not in library_logger.filters:
            library_logger.addFilter(_demote_filter)


def signal_endpoint(config: TelemetryConfig, signal: str, env: Mapping[str, str] | None = None) -> str | None:
    """The endpoint of one signal (``traces`` or ``metrics``); None lets the OTLP library read the env.

    OTLP/HTTP: a base URL (``http://host:4318``) gets the signal's path appended. A base that already ends in
    a signal path (``http://host:4318/v1/traces``, as many guides write it) has that path stripped first, so
    metrics do not go to ``/v1/traces/v1/metrics``; :func:`stripped_signal_path` says when. With no
    ``telemetry.endpoint`` the OTel spec's variables apply: ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``
    used as given, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` as a base (stripped the same way).
    """
    env = os.environ if env is None else env
    base = config.endpoint
    if base is None:
        if config.protocol == "grpc" or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"):
            return None
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not base:
            return None
    base = base.rstrip("/")
    if config.protocol == "grpc":
        return base
    return _strip_signal_path(base)[0] + HTTP_PATHS[signal]


def _strip_signal_path(base: str) -> tuple[str, str | None]:
    """(``base`` without a trailing OTLP signal path, the path stripped or None)."""
    for path in SIGNAL_PATHS:
        if base.endswith(path):
            return base[: -len(path)], path
    return base, None


def stripped_signal_path(config: TelemetryConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The base endpoint (config, else ``OTEL_EXPORTER_OTLP_ENDPOINT``) when it ended in a signal path that
    :func:`signal_endpoint` strips for OTLP/HTTP; None otherwise."""
    env = os.environ if env is None else env
    base = config.endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if config.protocol == "grpc" or not base:
        return None
    return base if _strip_signal_path(base.rstrip("/"))[1] else None


def describe_target(config: TelemetryConfig) -> str:
    """Where exports go, for log lines."""
    if config.exporter == "otlp":
        return f"OTLP/{config.protocol.upper()} {config.endpoint or '(endpoint from OTEL_EXPORTER_OTLP_*)'}"
    return config.exporter


def build_exporters(
    config: TelemetryConfig, health: ExportHealth
) -> tuple[SpanExporter | None, MetricExporter | None]:
    """The span and metric exporters ``config.exporter`` asks for (None, None for ``none``).

    Raises :class:`ConfigError` (one line) when the OTLP exporter package is not installed.
    """
    if config.exporter == "none":
        return None, None
    if config.exporter == "console":
        # sys.stdout as it is now (the exporters' defaults bind the stream of their import time)
        return ConsoleSpanExporter(out=sys.stdout), ConsoleMetricExporter(out=sys.stdout)
    spans, metrics = _otlp_exporters(config)
    quiet_otlp_library_logs()
    return GuardedSpanExporter(spans, health), GuardedMetricExporter(metrics, health)


def _otlp_exporters(config: TelemetryConfig) -> tuple[SpanExporter, MetricExporter]:
    timeout_s = config.export_timeout_s
    try:
        # the exporters are the optional [otlp] extra
        if config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
                OTLPMetricExporter as GrpcMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter as GrpcSpanExporter,
            )

            endpoint = signal_endpoint(config, "traces")
            insecure = endpoint is not None and endpoint.startswith("http://")
            return (
                GrpcSpanExporter(endpoint=endpoint, insecure=insecure, timeout=timeout_s),
                GrpcMetricExporter(endpoint=endpoint, insecure=insecure, timeout=timeout_s),
            )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        stripped = stripped_signal_path(config)
        if stripped is not None:
            logger.warning(
                "telemetry: OTLP endpoint %s ends in a signal path; using %s for traces and %s for metrics "
                "(give the base URL, or full URLs in OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT)",
                stripped,
                signal_endpoint(config, "traces"),
                signal_endpoint(config, "metrics"),
            )

        return (
            OTLPSpanExporter(endpoint=signal_endpoint(config, "traces"), timeout=timeout_s),
            OTLPMetricExporter(endpoint=signal_endpoint(config, "metrics"), timeout=timeout_s),
        )
    except ImportError as exc:
        raise ConfigError(
            f"telemetry.exporter = 'otlp' (protocol {config.protocol}) needs the OTLP exporters "
            f"({exc.name or exc}): pip install 'voltana[otlp]'"
        ) from None
