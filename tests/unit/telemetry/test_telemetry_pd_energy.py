"""Energy per request across P/D: simulated GPUs, the real EnergyMeter and attribute_energy, one trace each.

A small P/D run: the prefill instance computes three prompts (two share an iteration), the decode instance
generates their tokens in one shrinking batch while the clock changes. Every iteration's joules are read
from the simulated GPU group's counters through :class:`EnergyMeter` windows and split over the batch with
:func:`attribute_energy`; each phase's RequestRecord carries its share. The router's trace headers reach both
phases. Then: one trace per request, and the spans' per-phase joules add up to the meters' totals.
"""

from __future__ import annotations

import contextvars
import math
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry_helpers import Pipeline, iteration, point_values

from voltana.core.attribution import attribute_energy
from voltana.core.config import TelemetryConfig
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    IterationRecord,
    Phase,
    RequestRecord,
    ScheduledRequest,
    Slo,
)
from voltana.hardware.device import GpuGroup
from voltana.hardware.energy import EnergyMeter
from voltana.hardware.simulated import PerformanceModel, open_simulated, record_iteration
from voltana.plugins import get_plugin_manager, telemetry
from voltana.plugins.telemetry import names
from voltana.plugins.telemetry.pipeline import Telemetry

MODEL = "llama-3.1-8b"
PROMPTS = {"req-a": 900, "req-b": 300, "req-c": 1500}
OUTPUTS = {"req-a": 12, "req-b": 5, "req-c": 8}


@dataclass
class SimulatedInstance:
    """One instance on simulated GPUs: runs batches, meters them, attributes energy, emits records."""

    instance_id: str
    phase: Phase
    group: GpuGroup
    model: PerformanceModel
    now_s: float = 0.0
    energy_j: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    residency_s: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    first_token_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meter = EnergyMeter(self.group)
        self.start_j = self.meter.total_j()

    def run(self, requests: list[ScheduledRequest], clock_mhz: int) -> None:
        snapshot = BatchSnapshot.build(self.phase, requests, self.now_s, instance_id=self.instance_id)
        window = self.meter.begin()
        cost = self.model.cost(
            self.phase, snapshot.batch_size, snapshot.num_new_tokens, snapshot.num_context_tokens, clock_mhz
        )
        record_iteration(self.group, cost)  # the simulated GPUs' counters advance by this iteration
        energy_j = self.meter.end(window)
        record = IterationRecord(
            snapshot, ClockDecision(clock_mhz, DecisionReason.STATIC, "static"), clock_mhz, self.now_s,
            cost.latency_s, energy_j,
        )  # fmt: skip
        get_plugin_manager().hook.voltana_iteration_finished(record=record)
        for request_id, share_j in attribute_energy(snapshot, energy_j).items():
            self.energy_j[request_id] += share_j
        self.now_s += cost.latency_s
        for request in requests:
            residency = self.residency_s[request.request_id]
            residency[clock_mhz] = residency.get(clock_mhz, 0.0) + cost.latency_s
            self.first_token_s.setdefault(request.request_id, self.now_s)

    def finish(self, request_id: str, arrival_s: float, output_tokens: int, headers: dict[str, str]) -> None:
        record = RequestRecord(
            request_id, self.phase, self.instance_id, PROMPTS[request_id], output_tokens, arrival_s,
            self.first_token_s[request_id], self.now_s, self.energy_j[request_id],
            dict(self.residency_s[request_id]), MODEL, headers,
        )  # fmt: skip
        get_plugin_manager().hook.voltana_request_finished(record=record)

    @property
    def metered_j(self) -> float:
        return self.meter.total_j() - self.start_j


def test_pd_request_is_one_trace_and_phase_joules_add_up_to_the_meters(pipeline: Pipeline) -> None:
    prefill = SimulatedInstance("prefill-0", Phase.PREFILL, *simulated_group())
    decode = SimulatedInstance("decode-0", Phase.DECODE, *simulated_group())
    # The router handles each request in its own task (its own contextvars), holding its span meanwhile.
    routing = {rid: (contextvars.Context(), telemetry.start_request_trace(rid, MODEL)) for rid in PROMPTS}
    traces = {rid: task.run(span.__enter__) for rid, (task, span) in routing.items()}

    prefill.run([ScheduledRequest("req-a", 900, 0, 0.0), ScheduledRequest("req-b", 300, 0, 0.0)], 1410)
    prefill.run([ScheduledRequest("req-c", 1500, 0, 0.0)], 1110)
    for request_id in PROMPTS:
        prefill.finish(request_id, 0.0, 1, traces[request_id])

    decode.now_s = prefill.now_s
    generated = dict.fromkeys(PROMPTS, 1)
    for step in range(max(OUTPUTS.values())):
        running = [rid for rid in PROMPTS if generated[rid] < OUTPUTS[rid]]
        batch = [ScheduledRequest(rid, 1, PROMPTS[rid] + generated[rid], 0.0) for rid in running]
        decode.run(batch, 1005 if step % 3 else 1410)
        for rid in running:
            generated[rid] += 1
            if generated[rid] == OUTPUTS[rid]:
                decode.finish(rid, prefill.now_s, OUTPUTS[rid], traces[rid])
    for task, span in routing.values():
        task.run(span.__exit__, None, None, None)

    spans = pipeline.finished_spans()
    by_trace: dict[int, list] = defaultdict(list)
    for span in spans:
        by_trace[span.context.trace_id].append(span)
    assert len(by_trace) == 3  # one trace per request: router span + prefill span + decode span
    phase_j = {Phase.PREFILL: 0.0, Phase.DECODE: 0.0}
    for trace_spans in by_trace.values():
        kinds = sorted(span.name.split()[0] for span in trace_spans)
        assert kinds == ["decode", "prefill", "route"]
        (router,) = (s for s in trace_spans if s.name.startswith("route"))
        request_ids = {s.attributes[names.REQUEST_ID] for s in trace_spans}
        assert len(request_ids) == 1
        for span in trace_spans:
            if span is router:
                continue
            assert span.parent.span_id == router.context.span_id
            phase = Phase(span.attributes[names.PHASE])
            expected_clocks = (
                (1005, 1410) if phase is Phase.DECODE else (1110,) if "req-c" in request_ids else (1410,)
            )
            assert span.attributes[names.CLOCK_RESIDENCY_MHZ] == expected_clocks
            assert (
                span.attributes[names.phase_energy_attribute(phase.value)] == span.attributes[names.ENERGY_J]
            )
            phase_j[phase] += span.attributes[names.ENERGY_J]
    assert prefill.metered_j > 0 and decode.metered_j > 0
    assert phase_j[Phase.PREFILL] == pytest.approx(prefill.metered_j, rel=1e-9)
    assert phase_j[Phase.DECODE] == pytest.approx(decode.metered_j, rel=1e-9)

    hw_energy = point_values(pipeline.metrics()[names.HW_ENERGY])
    by_instance = {dict(key)[names.HW_ID]: value for key, value in hw_energy.items()}
    assert by_instance == {
        "prefill-0": pytest.approx(prefill.metered_j, rel=1e-9),
        "decode-0": pytest.approx(decode.metered_j, rel=1e-9),
    }


def simulated_group() -> tuple[GpuGroup, PerformanceModel]:
    group = open_simulated("a100-80gb", MODEL)
    return group, group.devices[0].model  # type: ignore[attr-defined]


batches = st.lists(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 4096), st.integers(0, 8192)),  # (request, new, context)
        min_size=1,
        max_size=8,
        unique_by=lambda r: r[0],
    ).map(lambda rs: [ScheduledRequest(f"r{i}", new, context, 0.0) for i, new, context in rs]),
    min_size=1,
    max_size=6,
)


def test_attribution_across_batches_sums_to_the_batch_energy_in_spans_and_metrics() -> None:
    """Property: for any batches and energies, attributed shares sum to each batch's joules, and the
    request spans' joules sum to the joules of all iterations (as does hw.energy)."""
    spans = InMemorySpanExporter()
    pipeline = Telemetry(TelemetryConfig(prometheus=True), Slo(0.8, 0.05), span_exporter=spans)
    examples = iter(range(10**9))

    @settings(max_examples=60, deadline=None)
    @given(batches=batches, energies_j=st.lists(st.floats(0.0, 5000.0), min_size=6, max_size=6))
    def check(batches: list[list[ScheduledRequest]], energies_j: list[float]) -> None:
        instance = f"i{next(examples)}"
        totals: dict[str, float] = defaultdict(float)
        for batch, energy_j in zip(batches, energies_j, strict=False):
            shares = attribute_energy(BatchSnapshot.build(Phase.DECODE, batch, 0.0), energy_j)
            assert set(shares) == {r.request_id for r in batch}
            assert math.fsum(shares.values()) == pytest.approx(energy_j, rel=1e-12, abs=1e-9)
            pipeline.observe_iteration(iteration(Phase.DECODE, instance, batch, energy_j=energy_j))
            for request_id, share_j in shares.items():
                totals[request_id] += share_j
        spans.clear()
        for request_id, joules in totals.items():
            pipeline.observe_request(
                RequestRecord(request_id, Phase.DECODE, instance, 1, 2, 0.0, 0.1, 0.2, joules)
            )
        assert pipeline.force_flush()
        span_j = math.fsum(s.attributes[names.ENERGY_J] for s in spans.get_finished_spans())
        batch_j = math.fsum(energies_j[: len(batches)])
        assert span_j == pytest.approx(batch_j, rel=1e-9, abs=1e-6)
        (aggregate,) = (a for a in pipeline.aggregates.snapshot() if a.instance_id == instance)
        assert aggregate.energy_j == pytest.approx(batch_j, rel=1e-9, abs=1e-6)

    try:
        check()
    finally:
        pipeline.shutdown()
