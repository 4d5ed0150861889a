"""Through the real engine runtime: a P/D pair of InstanceRuntimes on simulated GPUs feeds telemetry.

The runtime decides clocks (EcoFreq), meters each iteration on the simulated GPU counters, attributes the
joules over the batch and emits the request records; the router's trace headers are bound per request id.
Each request must come out as one trace whose phase spans carry the runtime's metered joules.
"""

from __future__ import annotations

import contextvars
from collections import defaultdict
from collections.abc import Iterator

import pytest
from telemetry_helpers import Pipeline

from voltana.adapters.runtime import InstanceRuntime
from voltana.core.config import VoltanaConfig
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.plugins import telemetry
from voltana.plugins.telemetry import names

MODEL = "llama-3.1-8b"
PROMPTS = {"req-1": 700, "req-2": 1200}
OUTPUT_TOKENS = 6


@pytest.fixture
def runtimes() -> Iterator[tuple[InstanceRuntime, InstanceRuntime]]:
    config = VoltanaConfig(enabled=True, hardware={"vendor": "simulated"}, policy={"clock": "ecofreq"})
    prefill = InstanceRuntime.start(config, Phase.PREFILL, "prefill-0", model_name=MODEL)
    decode = InstanceRuntime.start(config, Phase.DECODE, "decode-0", model_name=MODEL)
    yield prefill, decode
    prefill.close()
    decode.close()


def test_runtime_pd_requests_are_traces_whose_phase_joules_match_the_metered_iterations(
    pipeline: Pipeline, runtimes: tuple[InstanceRuntime, InstanceRuntime]
) -> None:
    prefill, decode = runtimes
    assert not prefill.monitor_only and not decode.monitor_only
    routing = {rid: (contextvars.Context(), telemetry.start_request_trace(rid, MODEL)) for rid in PROMPTS}
    for rid, (task, span) in routing.items():
        telemetry.bind_trace_context(rid, task.run(span.__enter__))  # what the adapter does on arrival

    metered_j: dict[str, float] = defaultdict(float)
    now_s = 1.0
    prompts = [ScheduledRequest(rid, tokens, 0, now_s) for rid, tokens in PROMPTS.items()]
    prefill.before_iteration(BatchSnapshot.build(Phase.PREFILL, prompts, now_s, instance_id="prefill-0"))
    record = prefill.after_iteration(first_token_request_ids=PROMPTS)
    assert record is not None and record.energy_j is not None
    metered_j["prefill"] += record.energy_j
    for rid, tokens in PROMPTS.items():
        prefill.request_finished(rid, input_tokens=tokens, output_tokens=1, finish_time_s=now_s + 0.1)

    for step in range(OUTPUT_TOKENS - 1):
        now_s += 0.05
        batch = [ScheduledRequest(rid, 1, tokens + step, 1.2) for rid, tokens in PROMPTS.items()]
        decode.before_iteration(BatchSnapshot.build(Phase.DECODE, batch, now_s, instance_id="decode-0"))
        record = decode.after_iteration(first_token_request_ids=PROMPTS if step == 0 else ())
        assert record is not None and record.energy_j is not None
        metered_j["decode"] += record.energy_j
    for rid, tokens in PROMPTS.items():
        decode.request_finished(rid, input_tokens=tokens, output_tokens=OUTPUT_TOKENS, finish_time_s=now_s)
    for task, span in routing.values():
        task.run(span.__exit__, None, None, None)

    spans = pipeline.finished_spans()
    traces: dict[int, dict[str, object]] = defaultdict(dict)
    for span in spans:
        traces[span.context.trace_id][span.name.split()[0]] = span
    assert len(traces) == len(PROMPTS)
    phase_j: dict[str, float] = defaultdict(float)
    for trace_spans in traces.values():
        assert set(trace_spans) == {"route", "prefill", "decode"}
        router = trace_spans["route"]
        for phase in ("prefill", "decode"):
            span = trace_spans[phase]
            assert span.parent.span_id == router.context.span_id  # type: ignore[attr-defined]
            assert span.attributes[names.GEN_AI_REQUEST_MODEL] == MODEL  # type: ignore[attr-defined]
            phase_j[phase] += span.attributes[names.phase_energy_attribute(phase)]  # type: ignore[attr-defined]
    assert metered_j["prefill"] > 0 and metered_j["decode"] > 0
    assert phase_j["prefill"] == pytest.approx(metered_j["prefill"], rel=1e-9)
    assert phase_j["decode"] == pytest.approx(metered_j["decode"], rel=1e-9)
