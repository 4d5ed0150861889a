"""Real OTLP/HTTP export to a loopback receiver (decoded with opentelemetry-proto); unreachable endpoints."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from telemetry_helpers import OtlpReceiver, iteration, wait_until

from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase, RequestRecord, ScheduledRequest
from voltana.plugins import get_plugin_manager, telemetry
from voltana.plugins.telemetry import names
from voltana.plugins.telemetry.pipeline import Telemetry

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BATCH = [ScheduledRequest("req-7", 256, 0, 0.0)]


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    return getattr(value, kind)


def attributes_of(key_values: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in key_values if isinstance(kv, KeyValue)}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.close()


def otlp_config(endpoint: str, **telemetry_settings: Any) -> VoltanaConfig:
    settings = {"exporter": "otlp", "endpoint": endpoint, "protocol": "http", "service_name": "voltana-test",
                "resource_attributes": {"deployment.environment": "ci"}, **telemetry_settings}  # fmt: skip
    return VoltanaConfig(telemetry=settings)


def serve_one_request(hook: Any) -> None:
    """One prefill request: three iterations through the iteration hook, then its request record."""
    for i in range(3):
        hook.voltana_iteration_finished(
            record=iteration(Phase.PREFILL, "prefill-0", BATCH, clock_mhz=1305, energy_j=12.0, start_time_s=i)
        )
    hook.voltana_request_finished(
        record=RequestRecord(
            "req-7",
            Phase.PREFILL,
            "prefill-0",
            256,
            1,
            0.0,
            0.2,
            0.2,
            36.0,
            {1305: 0.06},
            "llama-3.1-8b",
            {"traceparent": TRACEPARENT},
        )
    )


def test_spans_and_metrics_arrive_over_otlp_http_with_names_units_and_attributes(
    receiver: OtlpReceiver,
) -> None:
    running = telemetry.configure_telemetry(otlp_config(receiver.url))
    assert running is not None
    serve_one_request(get_plugin_manager().hook)
    assert running.force_flush(timeout_s=10)
    telemetry.shutdown_telemetry()

    assert {path for path, _, _ in receiver.posts} == {"/v1/traces", "/v1/metrics"}
    assert all(content_type == "application/x-protobuf" for _, content_type, _ in receiver.posts)

    spans = []
    for body in receiver.bodies("/v1/traces"):
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            assert resource["service.name"] == "voltana-test"
            assert resource["deployment.environment"] == "ci"
            spans.extend(span for scope in resource_spans.scope_spans for span in scope.spans)
    (span,) = spans
    assert span.name == "prefill llama-3.1-8b"
    assert span.trace_id.hex() == TRACEPARENT.split("-")[1]
    assert span.parent_span_id.hex() == TRACEPARENT.split("-")[2]
    attrs = attributes_of(span.attributes)
    assert attrs[names.GEN_AI_REQUEST_MODEL] == "llama-3.1-8b"
    assert attrs[names.GEN_AI_USAGE_INPUT_TOKENS] == 256
    assert attrs[names.ENERGY_J] == attrs["voltana.energy.prefill.joules"] == 36.0
    assert attrs[names.CLOCK_RESIDENCY_MHZ] == (1305,)
    assert attrs[names.TTFT_SLO_MET] is True
    assert span.end_time_unix_nano - span.start_time_unix_nano == pytest.approx(0.2e9, abs=1e3)

    metrics: dict[str, Any] = {}
    for body in receiver.bodies("/v1/metrics"):
        request = ExportMetricsServiceRequest.FromString(body)
        for resource_metrics in request.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                metrics.update({metric.name: metric for metric in scope.metrics})
    energy = metrics[names.HW_ENERGY]
    assert energy.unit == "J" and energy.WhichOneof("data") == "sum" and energy.sum.is_monotonic
    (energy_point,) = energy.sum.data_points
    assert energy_point.as_double == pytest.approx(36.0)
    expected = {names.HW_ID: "prefill-0", names.HW_TYPE: "gpu", names.INSTANCE_ID: "prefill-0"}
    assert attributes_of(energy_point.attributes) == {**expected, names.PHASE: "prefill"}
    assert metrics[names.HW_POWER].unit == "W" and metrics[names.HW_POWER].WhichOneof("data") == "gauge"
    assert metrics[names.SM_CLOCK].unit == "MHz"
    ttft = metrics[names.TIME_TO_FIRST_TOKEN]
    assert ttft.unit == "s" and ttft.WhichOneof("data") == "histogram"
    (ttft_point,) = ttft.histogram.data_points
    assert tuple(ttft_point.explicit_bounds) == names.TTFT_BUCKETS_S
    assert ttft_point.count == 1 and ttft_point.sum == pytest.approx(0.2)
    assert attributes_of(ttft_point.attributes)[names.GEN_AI_OPERATION_NAME] == "text_completion"
    assert metrics[names.REQUEST_DURATION].unit == "s"
    assert {names.CLOCK_RESIDENCY, names.DECISIONS, names.SLO_REQUESTS, names.REQUEST_ENERGY} <= set(metrics)


def unused_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serving_loop(iterations: int = 1000, requests: int = 100) -> float:
    """Run hooks as an engine would; returns the longest single hook call (s)."""
    hook = get_plugin_manager().hook
    longest_s = 0.0
    for i in range(iterations):
        record = iteration(Phase.DECODE, "decode-0", BATCH, energy_j=2.0, start_time_s=i * 0.02)
        start = time.perf_counter()
        hook.voltana_iteration_finished(record=record)
        if i % (iterations // requests) == 0:
            hook.voltana_request_finished(
                record=RequestRecord(f"r{i}", Phase.DECODE, "decode-0", 10, 5, 0, 0, 1, 3)
            )
        longest_s = max(longest_s, time.perf_counter() - start)
    return longest_s


def dead_endpoint_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("opentelemetry")
    ] + [r for r in caplog.records if r.name == "voltana.telemetry" and "cannot export" in r.getMessage()]


def test_refused_endpoint_serving_continues_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    timeout_s = 1.0
    config = otlp_config(f"http://127.0.0.1:{unused_loopback_port()}", export_interval_s=0.1,
                         export_timeout_s=timeout_s)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        running = telemetry.configure_telemetry(config)
        assert isinstance(running, Telemetry)
        longest_s = serving_loop()
        assert wait_until(lambda: running.health.failures >= 2)  # several metric exports failed meanwhile
        telemetry.shutdown_telemetry()
    # no hook call waited on an export attempt (each may take up to the export timeout)
    assert longest_s < timeout_s / 2
    (warning,) = dead_endpoint_warnings(caplog)
    assert warning.name == "voltana.telemetry"
    assert "serving continues" in warning.getMessage()


def test_hanging_endpoint_never_blocks_the_hooks(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        timeout_s = 1.0
        config = otlp_config(f"http://127.0.0.1:{silent.getsockname()[1]}", export_interval_s=0.05,
                             export_timeout_s=timeout_s)  # fmt: skip
        with caplog.at_level(logging.WARNING):
            running = telemetry.configure_telemetry(config)
            assert isinstance(running, Telemetry)
            time.sleep(0.1)  # a metric export is now stuck waiting for an answer
            longest_s = serving_loop()
            assert wait_until(lambda: running.health.failures >= 1)
            telemetry.shutdown_telemetry()
    assert longest_s < timeout_s / 2
    assert len(dead_endpoint_warnings(caplog)) == 1


def test_outage_warns_once_and_recovery_is_reported(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail_status = 500  # not retryable: each export fails at once
    with caplog.at_level(logging.INFO, logger="voltana.telemetry"):
        running = telemetry.configure_telemetry(otlp_config(receiver.url, export_interval_s=0.05))
        assert isinstance(running, Telemetry)
        serving_loop(iterations=100, requests=10)
        assert wait_until(lambda: running.health.failures >= 3)
        receiver.fail_status = None
        posts_before = len(receiver.posts)
        assert wait_until(lambda: len(receiver.posts) > posts_before + 1)
        assert running.force_flush(timeout_s=5)
        telemetry.shutdown_telemetry()
    messages = [r.getMessage() for r in caplog.records if r.name == "voltana.telemetry"]
    assert sum("cannot export" in m for m in messages) == 1
    assert sum("succeed again" in m for m in messages) == 1


def test_spans_and_metrics_arrive_over_otlp_grpc() -> None:
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: dict[str, list[Any]] = {"traces": [], "metrics": []}

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received["traces"].append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received["metrics"].append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        running = telemetry.configure_telemetry(otlp_config(f"http://127.0.0.1:{port}", protocol="grpc"))
        assert running is not None
        serve_one_request(get_plugin_manager().hook)
        assert running.force_flush(timeout_s=10)
        telemetry.shutdown_telemetry()
    finally:
        server.stop(grace=None)

    spans = [
        s for r in received["traces"] for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]
    (span,) = spans
    assert attributes_of(span.attributes)["voltana.energy.prefill.joules"] == 36.0
    metric_names = {
        m.name
        for r in received["metrics"]
        for rm in r.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {names.HW_ENERGY, names.TIME_TO_FIRST_TOKEN, names.SM_CLOCK} <= metric_names


@pytest.mark.parametrize("where", ["config", "OTEL_EXPORTER_OTLP_ENDPOINT"])
def test_endpoint_given_with_a_signal_path_sends_each_signal_to_its_own_path(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with_path = receiver.url + "/v1/traces"  # as many guides write it
    if where == "config":
        config = otlp_config(with_path)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", with_path)
        config = VoltanaConfig(telemetry={"exporter": "otlp", "protocol": "http"})
    with caplog.at_level(logging.WARNING, logger="voltana.telemetry"):
        running = telemetry.configure_telemetry(config)
        assert running is not None
        serve_one_request(get_plugin_manager().hook)
        assert running.force_flush(timeout_s=10)
        telemetry.shutdown_telemetry()
    assert {path for path, _, _ in receiver.posts} == {"/v1/traces", "/v1/metrics"}
    assert ExportTraceServiceRequest.FromString(receiver.bodies("/v1/traces")[0]).resource_spans
    assert ExportMetricsServiceRequest.FromString(receiver.bodies("/v1/metrics")[0]).resource_metrics
    said = [r.getMessage() for r in caplog.records if "ends in a signal path" in r.getMessage()]
    assert len(said) == 1
    assert f"{receiver.url}/v1/metrics for metrics" in said[0]


def test_per_signal_env_endpoints_are_used_as_given(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url + "/custom/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", receiver.url + "/custom/metrics")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/unused")
    running = telemetry.configure_telemetry(VoltanaConfig(telemetry={"exporter": "otlp"}))
    assert running is not None
    serve_one_request(get_plugin_manager().hook)
    assert running.force_flush(timeout_s=10)
    telemetry.shutdown_telemetry()
    assert {path for path, _, _ in receiver.posts} == {"/custom/traces", "/custom/metrics"}


def test_shutdown_with_a_silent_collector_is_bounded_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from voltana.plugins.telemetry.pipeline import SHUTDOWN_GRACE_S

    timeout_s = 2.0
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        config = otlp_config(f"http://127.0.0.1:{silent.getsockname()[1]}", export_interval_s=0.2,
                             export_timeout_s=timeout_s)  # fmt: skip
        with caplog.at_level(logging.WARNING):
            for _ in range(2):  # the pipeline rebuilt during the same outage: still one warning
                running = telemetry.configure_telemetry(config)
                assert isinstance(running, Telemetry)
                serving_loop(iterations=200, requests=20)
                assert wait_until(lambda: running.health.failures >= 1)  # noqa: B023 - used at once
                time.sleep(0.3)  # a metric export is stuck again, spans are queued
                start = time.monotonic()
                telemetry.shutdown_telemetry()
                took_s = time.monotonic() - start
                # a bound, not a speed measure: before, each stuck export added its own timeout (3x)
                assert took_s <= timeout_s + SHUTDOWN_GRACE_S + 0.3, took_s
    warnings = [
        r for r in dead_endpoint_warnings(caplog) if "further failures are not logged" in r.getMessage()
    ]
    assert len(warnings) == 1
