"""Request spans: GenAI and voltana attributes, SLO checks, and W3C trace joining."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind
from telemetry_helpers import Pipeline

from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase, RequestRecord
from voltana.plugins import get_plugin_manager, telemetry
from voltana.plugins.telemetry import names
from voltana.plugins.telemetry.context import TraceContextRegistry, trace_id_of

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def prefill_record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = dict(
        request_id="req-1",
        phase=Phase.PREFILL,
        instance_id="prefill-0",
        input_tokens=512,
        output_tokens=1,
        arrival_time_s=10.0,
        first_token_time_s=10.3,
        finish_time_s=10.3,
        energy_j=42.5,
        clock_residency_s={1410: 0.1, 1005: 0.2},
        model="llama-3.1-8b",
    )
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def decode_record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = dict(
        request_id="req-1",
        phase=Phase.DECODE,
        instance_id="decode-0",
        input_tokens=512,
        output_tokens=11,
        arrival_time_s=10.35,
        first_token_time_s=10.4,
        finish_time_s=11.0,
        energy_j=80.0,
        clock_residency_s={1110: 0.65},
        model="llama-3.1-8b",
    )
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def test_prefill_span_carries_genai_usage_energy_residency_and_ttft(pipeline: Pipeline) -> None:
    get_plugin_manager().hook.voltana_request_finished(record=prefill_record())

    (span,) = pipeline.finished_spans()
    attrs = dict(span.attributes or {})
    assert span.name == "prefill llama-3.1-8b"
    assert span.kind is SpanKind.SERVER
    assert attrs[names.GEN_AI_REQUEST_MODEL] == "llama-3.1-8b"
    assert attrs[names.GEN_AI_OPERATION_NAME] == "text_completion"
    assert attrs[names.GEN_AI_USAGE_INPUT_TOKENS] == 512
    assert attrs[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 1
    assert attrs[names.ENERGY_J] == attrs["voltana.energy.prefill.joules"] == 42.5
    assert "voltana.energy.decode.joules" not in attrs
    assert attrs[names.CLOCK_RESIDENCY_MHZ] == (1005, 1410)
    assert attrs[names.CLOCK_RESIDENCY_S] == (0.2, 0.1)
    assert attrs[names.CLOCK_MEAN_MHZ] == pytest.approx((1005 * 0.2 + 1410 * 0.1) / 0.3)
    assert attrs[names.TTFT_OBSERVED_S] == pytest.approx(0.3)
    assert attrs[names.TTFT_SLO_S] == 0.8
    assert attrs[names.TTFT_SLO_MET] is True
    assert names.ITL_OBSERVED_S not in attrs
    # span times are the record's times shifted onto the Unix clock
    assert span.end_time - span.start_time == pytest.approx(0.3e9, abs=1e3)
    (event,) = span.events
    assert event.name == names.FIRST_TOKEN_EVENT
    assert event.timestamp == span.end_time


def test_decode_span_reports_itl_against_slo_and_joules_per_token(pipeline: Pipeline) -> None:
    slow = decode_record(request_id="req-slow", first_token_time_s=10.4, finish_time_s=11.4)  # 0.1 s/token
    telemetry.voltana_request_finished(decode_record())
    telemetry.voltana_request_finished(slow)

    by_id = {span.attributes[names.REQUEST_ID]: dict(span.attributes) for span in pipeline.finished_spans()}
    fast_attrs, slow_attrs = by_id["req-1"], by_id["req-slow"]
    assert fast_attrs[names.ITL_OBSERVED_S] == pytest.approx(0.06)
    assert fast_attrs[names.ITL_SLO_MET] is False  # 60 ms > 50 ms
    assert slow_attrs[names.ITL_OBSERVED_S] == pytest.approx(0.1)
    assert fast_attrs["voltana.energy.decode.joules"] == 80.0
    assert fast_attrs[names.ENERGY_PER_OUTPUT_TOKEN_J] == pytest.approx(80.0 / 11)
    assert names.TTFT_OBSERVED_S not in fast_attrs


def test_both_phases_join_the_router_trace(pipeline: Pipeline) -> None:
    with telemetry.start_request_trace("req-1", "llama-3.1-8b", {"traceparent": TRACEPARENT}) as headers:
        # the router forwards the same headers to the prefill and the decode instance
        telemetry.voltana_request_finished(prefill_record(trace_headers=headers))
        telemetry.voltana_request_finished(decode_record(trace_headers=headers))

    spans = {span.name: span for span in pipeline.finished_spans()}
    router = spans["route llama-3.1-8b"]
    prefill, decode = spans["prefill llama-3.1-8b"], spans["decode llama-3.1-8b"]
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {trace_id_of(TRACEPARENT)}
    assert prefill.parent.span_id == decode.parent.span_id == router.context.span_id
    assert f"{router.parent.span_id:016x}" == TRACEPARENT.split("-")[2]


def test_headers_bound_by_request_id_join_the_trace(pipeline: Pipeline) -> None:
    telemetry.bind_trace_context("req-1", {"TraceParent": TRACEPARENT, "x-other": "dropped"})
    telemetry.voltana_request_finished(prefill_record())
    telemetry.voltana_request_finished(decode_record())

    spans = pipeline.finished_spans()
    assert len(spans) == 2
    assert {f"{s.context.trace_id:032x}" for s in spans} == {trace_id_of(TRACEPARENT)}


def test_without_telemetry_the_hooks_do_nothing_and_the_router_still_propagates() -> None:
    assert telemetry.configure_telemetry(VoltanaConfig()) is None  # exporter none: stays off
    telemetry.voltana_request_finished(prefill_record())
    assert telemetry.active_telemetry() is None
    assert telemetry.prometheus_text() == ""

    with telemetry.start_request_trace("r", incoming_headers={"traceparent": TRACEPARENT}) as passed:
        assert passed == {"traceparent": TRACEPARENT}
    with telemetry.start_request_trace("r") as fresh_a, telemetry.start_request_trace("r") as fresh_b:
        assert trace_id_of(fresh_a["traceparent"]) is not None
        assert trace_id_of(fresh_a["traceparent"]) != trace_id_of(fresh_b["traceparent"])


def test_registry_is_bounded_and_keeps_only_trace_headers() -> None:
    registry = TraceContextRegistry(capacity=2)
    for i in range(3):
        registry.bind(f"r{i}", {"traceparent": TRACEPARENT, "tracestate": "a=b", "authorization": "secret"})
    assert len(registry) == 2
    assert registry.get("r0") == {}
    assert registry.get("r2") == {"traceparent": TRACEPARENT, "tracestate": "a=b"}
    registry.forget("r2")
    assert registry.get("r2") == {}


def test_a_failing_record_is_reported_once_and_never_raises(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    broken = prefill_record(clock_residency_s=None)  # not a dict: building its attributes fails
    with caplog.at_level("WARNING", logger="voltana.telemetry"):
        for _ in range(3):
            telemetry.voltana_request_finished(broken)  # queued: the engine's thread sees no error
        telemetry.voltana_request_finished(prefill_record(request_id="fine"))
        spans = pipeline.finished_spans()  # processes the queue
    warnings = [r for r in caplog.records if "recording requests failed" in r.getMessage()]
    assert len(warnings) == 1
    assert pipeline.telemetry.requests.failed == 3
    assert [span.attributes[names.REQUEST_ID] for span in spans] == ["fine"]


def test_span_times_accept_unix_and_monotonic_clocks(pipeline: Pipeline) -> None:
    unix_now_s = 1_764_000_000.0  # an engine that stamps requests with time.time()
    first_token_s = unix_now_s + 0.3
    telemetry.voltana_request_finished(
        prefill_record(
            request_id="unix",
            arrival_time_s=unix_now_s,
            first_token_time_s=first_token_s,
            finish_time_s=first_token_s,
        )
    )
    telemetry.voltana_request_finished(prefill_record(request_id="monotonic"))  # arrival at 10 s after boot

    spans = {span.attributes[names.REQUEST_ID]: span for span in pipeline.finished_spans()}
    assert spans["unix"].start_time == int(unix_now_s * 1e9)
    offset_s = pipeline.telemetry.epoch_offset_s
    assert spans["monotonic"].start_time == pytest.approx((10.0 + offset_s) * 1e9, abs=1e3)
    assert offset_s > 1e9  # monotonic time shifted onto today's Unix time
