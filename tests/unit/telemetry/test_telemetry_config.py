"""Building telemetry from ``[telemetry]``: exporters per setting, endpoints, one-line errors, doctor."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

from voltana.core.config import ConfigError, TelemetryConfig, VoltanaConfig
from voltana.core.types import Phase, RequestRecord
from voltana.plugins import telemetry
from voltana.plugins.telemetry.exporters import (
    ExportHealth,
    GuardedSpanExporter,
    build_exporters,
    signal_endpoint,
)


def test_http_endpoints_get_the_signal_path_and_grpc_keeps_the_base() -> None:
    http = TelemetryConfig(exporter="otlp", endpoint="http://collector:4318/")
    assert signal_endpoint(http, "traces") == "http://collector:4318/v1/traces"
    assert signal_endpoint(http, "metrics") == "http://collector:4318/v1/metrics"
    full = TelemetryConfig(exporter="otlp", endpoint="http://collector:4318/v1/traces")
    assert signal_endpoint(full, "traces") == "http://collector:4318/v1/traces"
    grpc = TelemetryConfig(exporter="otlp", endpoint="http://collector:4317", protocol="grpc")
    assert signal_endpoint(grpc, "traces") == "http://collector:4317"
    assert signal_endpoint(TelemetryConfig(exporter="otlp"), "traces") is None  # OTEL_* env decides


@pytest.mark.parametrize(
    ("protocol", "exporter_type"), [("http", HttpSpanExporter), ("grpc", GrpcSpanExporter)]
)
def test_otlp_exporters_are_guarded_and_match_the_protocol(protocol: str, exporter_type: type) -> None:
    config = TelemetryConfig(exporter="otlp", endpoint="http://127.0.0.1:1", protocol=protocol)  # type: ignore[arg-type]
    spans, metrics = build_exporters(config, ExportHealth("test"))
    assert isinstance(spans, GuardedSpanExporter)
    assert isinstance(spans.inner, exporter_type)
    assert metrics is not None
    spans.shutdown()
    metrics.shutdown()


def test_none_builds_nothing_and_telemetry_stays_off() -> None:
    assert build_exporters(TelemetryConfig(), ExportHealth("none")) == (None, None)
    assert telemetry.configure_telemetry(VoltanaConfig()) is None


def test_missing_otlp_package_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    config = VoltanaConfig(telemetry={"exporter": "otlp", "endpoint": "http://127.0.0.1:4318"})
    with pytest.raises(ConfigError) as caught:
        telemetry.configure_telemetry(config)
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install 'voltana[otlp]'" in message
    assert telemetry.active_telemetry() is None


def test_console_exporter_prints_the_request_span(capsys: pytest.CaptureFixture[str]) -> None:
    running = telemetry.configure_telemetry(VoltanaConfig(telemetry={"exporter": "console"}))
    assert running is not None
    telemetry.voltana_request_finished(RequestRecord("req-c", Phase.PREFILL, "p0", 10, 1, 0.0, 0.1, 0.1, 2.5))
    assert running.force_flush()
    telemetry.shutdown_telemetry()
    printed = capsys.readouterr().out
    assert '"voltana.request.id": "req-c"' in printed
    assert '"voltana.energy.prefill.joules": 2.5' in printed


def test_configure_is_idempotent_and_shutdown_is_safe_twice() -> None:
    config = VoltanaConfig(telemetry={"prometheus": True})
    first = telemetry.configure_telemetry(config)
    assert first is not None
    assert telemetry.configure_telemetry(config) is first
    telemetry.shutdown_telemetry()
    telemetry.shutdown_telemetry()
    assert telemetry.active_telemetry() is None


def test_doctor_reports_the_telemetry_exporter() -> None:
    (check,) = telemetry.voltana_doctor_checks(
        VoltanaConfig(telemetry={"exporter": "otlp", "protocol": "grpc"})
    )
    assert check.section == "telemetry" and check.ok is True and "otlp/grpc" in check.detail
    (off,) = telemetry.voltana_doctor_checks(VoltanaConfig())
    assert off.ok is None and off.detail == "none"
