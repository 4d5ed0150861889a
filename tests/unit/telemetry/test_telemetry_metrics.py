"""Metrics: hot-path aggregates behind observable instruments, GenAI histograms, SLO counters, Prometheus."""

from __future__ import annotations

import socket

import httpx
import pytest
from opentelemetry.sdk.metrics.export import Histogram
from prometheus_client.parser import text_string_to_metric_families
from telemetry_helpers import Pipeline, iteration, point_values

from voltana.core.config import TelemetryConfig, VoltanaConfig
from voltana.core.types import DecisionReason, Phase, RequestRecord, ScheduledRequest, Slo
from voltana.plugins import get_plugin_manager, telemetry
from voltana.plugins.telemetry import names
from voltana.plugins.telemetry.aggregates import InstanceAggregate
from voltana.plugins.telemetry.pipeline import Telemetry
from voltana.plugins.telemetry.prometheus import CONTENT_TYPE, PrometheusExposition

DECODE_BATCH = [ScheduledRequest(f"r{i}", 1, 300, 0.0) for i in range(4)]
DECODE_KEY = frozenset(
    {(names.INSTANCE_ID, "d0"), (names.PHASE, "decode"), (names.ENERGY_SOURCE, "simulated")}
)


def run_decode_iterations(clocks_mhz: list[int]) -> list[float]:
    """Feed one decode iteration per clock through the plugin hook; returns the energies (J)."""
    hook = get_plugin_manager().hook.voltana_iteration_finished
    energies = []
    for i, clock in enumerate(clocks_mhz):
        energy_j = 3.0 + 0.5 * i
        energies.append(energy_j)
        reason = DecisionReason.ENERGY_OPTIMAL if i % 2 else DecisionReason.SLO_BOUND
        record = iteration(
            Phase.DECODE, "d0", DECODE_BATCH, clock_mhz=clock, latency_s=0.025, energy_j=energy_j,
            predicted_latency_s=0.02, reason=reason,
        )  # fmt: skip
        hook(record=record)
    return energies


def test_iteration_metrics_aggregate_energy_clock_decisions_and_predictor_error(pipeline: Pipeline) -> None:
    clocks = [1005, 1005, 1410, 1410, 1005]
    energies = run_decode_iterations(clocks)
    metrics = pipeline.metrics()

    hw_key = DECODE_KEY | {(names.HW_ID, "d0"), (names.HW_TYPE, "gpu")}
    assert metrics[names.HW_ENERGY].unit == "J"
    assert metrics[names.HW_ENERGY].data.is_monotonic
    assert point_values(metrics[names.HW_ENERGY]) == {hw_key: pytest.approx(sum(energies))}
    assert point_values(metrics[names.HW_POWER]) == {hw_key: pytest.approx(energies[-1] / 0.025)}
    assert metrics[names.HW_POWER].unit == "W"
    assert point_values(metrics[names.SM_CLOCK]) == {DECODE_KEY: 1005}
    assert point_values(metrics[names.CLOCK_CHANGES]) == {DECODE_KEY: 2}
    assert point_values(metrics[names.CLOCK_RESIDENCY]) == {
        DECODE_KEY | {(names.CLOCK_MHZ, 1005)}: pytest.approx(3 * 0.025),
        DECODE_KEY | {(names.CLOCK_MHZ, 1410)}: pytest.approx(2 * 0.025),
    }
    decisions = point_values(metrics[names.DECISIONS])
    assert decisions[DECODE_KEY | {(names.DECISION_REASON, "slo-bound"), (names.POLICY, "ecofreq")}] == 3
    assert decisions[DECODE_KEY | {(names.DECISION_REASON, "energy-optimal"), (names.POLICY, "ecofreq")}] == 2
    assert point_values(metrics[names.PREDICTOR_PREDICTIONS]) == {DECODE_KEY: 5}
    assert point_values(metrics[names.PREDICTOR_ABS_ERROR]) == {DECODE_KEY: pytest.approx(5 * 0.005)}
    assert point_values(metrics[names.PREDICTOR_RELATIVE_ERROR]) == {DECODE_KEY: pytest.approx(0.2)}
    assert point_values(metrics[names.ITERATIONS]) == {DECODE_KEY: 5}


def test_aggregate_residency_sums_to_busy_time_and_skips_missing_energy() -> None:
    aggregate = InstanceAggregate("p0", Phase.PREFILL)
    batch = [ScheduledRequest("a", 128, 0, 0.0)]
    for clock, energy in [(1410, 10.0), (1200, None), (1410, 6.0)]:
        aggregate.add(iteration(Phase.PREFILL, "p0", batch, clock_mhz=clock, latency_s=0.1, energy_j=energy))
    assert sum(aggregate.residency_s.values()) == pytest.approx(aggregate.busy_s) == pytest.approx(0.3)
    assert aggregate.energy_j == 16.0
    assert aggregate.predictions == 0 and aggregate.predictor_relative_error is None
    assert aggregate.clock_changes == 2


def test_request_histograms_use_the_genai_bucket_boundaries_and_count_slo_attainment(
    pipeline: Pipeline,
) -> None:
    hook = get_plugin_manager().hook.voltana_request_finished
    # (id, phase, instance, input, output, arrival, first token, finish, J): TTFT 0.5 s and 1.2 s, ITL 40 ms
    hook(record=RequestRecord("a", Phase.PREFILL, "p0", 100, 1, 0.0, 0.5, 0.5, 20.0, model="m"))
    hook(record=RequestRecord("b", Phase.PREFILL, "p0", 100, 1, 0.0, 1.2, 1.2, 30.0, model="m"))
    hook(record=RequestRecord("a", Phase.DECODE, "d0", 100, 21, 0.6, 0.62, 1.42, 50.0, model="m"))
    metrics = pipeline.metrics()

    ttft, tpot = metrics[names.TIME_TO_FIRST_TOKEN], metrics[names.TIME_PER_OUTPUT_TOKEN]
    duration = metrics[names.REQUEST_DURATION]
    for metric, buckets in [(ttft, names.TTFT_BUCKETS_S), (tpot, names.TPOT_BUCKETS_S),
                            (duration, names.DURATION_BUCKETS_S)]:  # fmt: skip
        assert isinstance(metric.data, Histogram) and metric.unit == "s"
        assert all(tuple(p.explicit_bounds) == buckets for p in metric.data.data_points)
    (ttft_point,) = ttft.data.data_points
    assert ttft_point.count == 2 and ttft_point.sum == pytest.approx(1.7)
    assert ttft_point.attributes[names.GEN_AI_REQUEST_MODEL] == "m"
    assert ttft_point.attributes[names.GEN_AI_OPERATION_NAME] == "text_completion"
    (tpot_point,) = tpot.data.data_points
    assert tpot_point.sum == pytest.approx(0.04)
    slo = {
        (p.attributes[names.SLO_NAME], p.attributes[names.SLO_MET]): p.value
        for p in metrics[names.SLO_REQUESTS].data.data_points
    }
    assert slo == {("ttft", True): 1, ("ttft", False): 1, ("itl", True): 1}
    energy_by_phase = {
        p.attributes[names.PHASE]: p.sum for p in metrics[names.REQUEST_ENERGY].data.data_points
    }
    assert energy_by_phase == {"prefill": 50.0, "decode": 50.0}


def test_prometheus_text_parses_with_conventional_names(pipeline: Pipeline) -> None:
    energies = run_decode_iterations([1005, 1410])
    text = telemetry.prometheus_text()
    families = {family.name: family for family in text_string_to_metric_families(text)}

    energy = families["hw_energy_joules"]
    assert energy.type == "counter"
    (sample,) = energy.samples
    assert sample.name == "hw_energy_joules_total"
    assert sample.labels == {
        "hw_id": "d0",
        "hw_type": "gpu",
        "voltana_instance_id": "d0",
        "voltana_phase": "decode",
        "voltana_energy_source": "simulated",
    }
    assert sample.value == pytest.approx(sum(energies))
    assert families["hw_power_watts"].type == "gauge"
    # OpenTelemetry's exporter appends units it has a word for, others as written (UCUM "MHz")
    assert families["voltana_gpu_sm_clock_MHz"].samples[0].value == 1410
    assert families["voltana_predictor_relative_error"].type == "gauge"  # unit "1": no suffix
    residency = {
        s.labels["voltana_clock_mhz"]: s.value for s in families["voltana_clock_residency_seconds"].samples
    }
    assert residency == {"1005": pytest.approx(0.025), "1410": pytest.approx(0.025)}


def test_prometheus_histogram_buckets_are_cumulative(pipeline: Pipeline) -> None:
    for i, ttft_s in enumerate([0.03, 0.3, 3.0]):
        telemetry.voltana_request_finished(
            RequestRecord(f"r{i}", Phase.PREFILL, "p0", 10, 1, 0.0, ttft_s, ttft_s, 1.0)
        )
    families = {f.name: f for f in text_string_to_metric_families(telemetry.prometheus_text())}
    buckets = {
        s.labels["le"]: s.value
        for s in families["gen_ai_server_time_to_first_token_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.04"] == 1 and buckets["0.5"] == 2 and buckets["5.0"] == 3 and buckets["+Inf"] == 3
    assert list(buckets.values()) == sorted(buckets.values())


def test_metrics_endpoint_serves_prometheus_text_on_loopback() -> None:
    running = telemetry.configure_telemetry(VoltanaConfig(telemetry={"prometheus": True}))
    assert running is not None
    exposition = running.prometheus_exposition  # what telemetry.prometheus_port serves, here on a free port
    assert isinstance(exposition, PrometheusExposition)
    port = exposition.serve(0)
    try:
        telemetry.voltana_iteration_finished(iteration(Phase.DECODE, "d0", DECODE_BATCH, energy_j=7.0))
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        telemetry.shutdown_telemetry()
    assert exposition.port is None  # shut down with the pipeline
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    (sample,) = families["hw_energy_joules"].samples
    assert sample.labels["hw_id"] == "d0" and sample.value == pytest.approx(7.0)
    # the pipeline's own registry: nothing of the process-wide one (vLLM serves that at its /metrics)
    assert not any(name.startswith(("python_", "process_")) for name in families)


def test_configured_metrics_port_serves_and_a_taken_port_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    first = telemetry.configure_telemetry(VoltanaConfig(telemetry={"prometheus_port": free_port()}))
    assert first is not None and first.prometheus_port is not None
    telemetry.voltana_iteration_finished(iteration(Phase.DECODE, "d0", DECODE_BATCH, energy_j=7.0))
    try:
        body = httpx.get(f"http://127.0.0.1:{first.prometheus_port}/metrics", timeout=5).text
        assert "hw_energy_joules_total" in body
        with caplog.at_level("WARNING", logger="voltana.telemetry"):
            taken = Telemetry(TelemetryConfig(prometheus_port=first.prometheus_port), Slo(0.8, 0.05))
        assert taken.prometheus_port is None
        assert any("cannot serve /metrics" in r.getMessage() for r in caplog.records)
        taken.shutdown()
    finally:
        telemetry.shutdown_telemetry()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
