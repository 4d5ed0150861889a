"""The P/D app on a local Ray cluster: 2 prefill + 2 decode replicas (the engine emulator with voltana on)
behind the voltana request routers, requests through the app's OpenAI ingress on Ray Serve's HTTP proxy.

Replicas wrap the engine emulator, not vLLM: four vLLM CPU engines (plus Ray) do not fit the 2 shared cores
of CI, and Ray Serve LLM's vLLM deployments ask for GPU placement groups.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.ray_cluster.helpers import answer_text, deployed, expected_answer, request_body, send_all
from tests.unit.telemetry.telemetry_helpers import OtlpReceiver, wait_until
from voltana.core.config import VoltanaConfig
from voltana.core.policies import route_policy
from voltana.core.types import Phase, RouteRequest, Slo
from voltana.hardware.simulated import performance_model
from voltana.integrations.ray_serve.stats import state_from_record
from voltana.plugins import get_plugin_manager
from voltana.plugins.ecoroute import choose_ecoroute
from voltana.router.choice import route_context
from voltana.router.predictors import route_predictors

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def app_config(otlp_url: str) -> dict[str, Any]:
    return {
        "hardware": {"vendor": "simulated"},
        "policy": {"decode_route": "ecoroute", "prefill_route": "predicted-ttft"},
        "telemetry": {"exporter": "otlp", "endpoint": otlp_url, "service_name": "voltana-ray-test"},
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def pd(serve_port: int, receiver: OtlpReceiver) -> Iterator[dict[str, Any]]:
    """The app with traffic already served: 3 waves of 12 concurrent requests of mixed kinds."""
    config = app_config(receiver.url)
    with deployed("pd", config, serve_port) as base_url:
        bodies = [
            request_body(i, chat=i % 3 == 0, stream=i % 4 == 1, max_tokens=8 + (i * 7) % 40)
            for i in range(36)
        ]
        results = []
        for wave in range(3):
            results += asyncio.run(send_all(base_url, bodies[wave * 12 : (wave + 1) * 12]))
            time.sleep(0.3)  # let the replicas publish their state between waves
        routing = httpx.get(f"{base_url}/voltana/routing", timeout=30).json()
        yield {"url": base_url, "config": config, "bodies": bodies, "results": results, "routing": routing}


def test_answers_through_the_openai_ingress_are_correct(pd: dict[str, Any]) -> None:
    for body, result in zip(pd["bodies"], pd["results"], strict=True):
        assert isinstance(result, httpx.Response), f"request failed: {result!r}"
        assert result.status_code == 200, result.text
        assert answer_text(result, body) == expected_answer(body)
    assert pd["routing"]["counters"] == {"completed": len(pd["bodies"])}


def test_every_request_was_routed_once_per_phase_by_the_voltana_routers(pd: dict[str, Any]) -> None:
    decisions = pd["routing"]["decisions"]
    for phase, policy in (("prefill", "predicted-ttft"), ("decode", "ecoroute")):
        mine = [d for d in decisions if d["phase"] == phase]
        assert len(mine) == len(pd["bodies"])
        assert {d["policy"] for d in mine} == {policy}
        assert not any(d["fallback"] for d in mine)
        assert all(len(d["candidates"]) == 2 for d in mine)  # both replicas of the phase were candidates


def _hook_choice(decision: dict[str, Any], config: VoltanaConfig, policy: str, phase: Phase) -> str | None:
    """What the routing policy ``policy`` answers for a recorded decision (fresh context, as the router)."""
    options = {"safety_margin": config.policy.safety_margin, **config.policy.options}
    slo = Slo(config.slo.ttft_s, config.slo.itl_s)
    ctx = route_context(policy, phase, slo, random.Random(0), options, route_predictors(config))
    request = RouteRequest(decision["request_id"], decision["input_tokens"], decision["max_output_tokens"])
    states = [state_from_record(c) for c in decision["candidates"]]
    return route_policy(get_plugin_manager().hook, policy)(request, states, ctx)


def test_decode_choices_are_what_ecoroute_picks_on_the_same_instance_state(pd: dict[str, Any]) -> None:
    config = VoltanaConfig(**pd["config"])
    decode = [d for d in pd["routing"]["decisions"] if d["phase"] == "decode"]
    for decision in decode:
        assert _hook_choice(decision, config, "ecoroute", Phase.DECODE) == decision["chosen"]
        # ... and the hook answer is EcoRoute's own rule, not some other plugin's.
        options = {"safety_margin": config.policy.safety_margin}
        ctx = route_context(
            "ecoroute", Phase.DECODE, Slo(config.slo.ttft_s, config.slo.itl_s), random.Random(0), options,
            route_predictors(config),
        )  # fmt: skip
        request = RouteRequest(
            decision["request_id"], decision["input_tokens"], decision["max_output_tokens"]
        )
        states = [state_from_record(c) for c in decision["candidates"]]
        assert choose_ecoroute(request, states, ctx) == decision["chosen"]
    # The states differed between decisions (load moved), so the match is not a constant answer.
    loads = {tuple((c["num_running"], c["kv_tokens"]) for c in d["candidates"]) for d in decode}
    assert len(loads) > 3


def test_prefill_choices_are_what_predicted_ttft_picks(pd: dict[str, Any]) -> None:
    config = VoltanaConfig(**pd["config"])
    for decision in (d for d in pd["routing"]["decisions"] if d["phase"] == "prefill"):
        assert _hook_choice(decision, config, "predicted-ttft", Phase.PREFILL) == decision["chosen"]


def test_replica_stats_reach_the_routers(pd: dict[str, Any]) -> None:
    model = performance_model("a100-80gb", "llama-3.1-8b")
    seen = [c for d in pd["routing"]["decisions"] for c in d["candidates"]]
    published = [c for c in seen if c["updated_at_s"] > 0]
    assert len(published) > len(seen) // 2  # after the first poll, every candidate carries published state
    for candidate in published:
        assert candidate["capture_sizes"] == list(model.capture_sizes)
        assert candidate["kv_capacity_tokens"] == model.kv_capacity_tokens
        assert candidate["sm_clock_mhz"] in model.supported_clocks_mhz
    # Load the replicas published (not only this router's own in-flight count): KV held and clocks chosen.
    decode = [c for d in pd["routing"]["decisions"] if d["phase"] == "decode" for c in d["candidates"]]
    assert any(c["kv_tokens"] > 0 for c in decode)
    assert len({c["sm_clock_mhz"] for c in published}) > 1  # voltana moved the clocks per iteration


def test_replicas_publish_their_energy_role_and_policy(pd: dict[str, Any]) -> None:
    last: dict[str, dict[str, Any]] = {}
    for decision in pd["routing"]["decisions"]:
        for candidate, state in zip(decision["candidates"], decision["published"], strict=True):
            if state is not None:
                assert state["instance_id"] == candidate["instance_id"]
                assert state["role"] == decision["phase"]
                last[candidate["instance_id"]] = state
    assert len(last) == 4  # all 2 + 2 replicas published
    for state in last.values():
        assert state["policy"] == "ecofreq"
        assert (state["energy_joules"] > 0) == (state["iterations"] > 0)  # energy so far: J of its iterations
    for phase in ("prefill", "decode"):
        assert sum(s["energy_joules"] for s in last.values() if s["role"] == phase) > 0


def _spans(receiver: OtlpReceiver) -> list[Any]:
    spans = []
    for body in receiver.bodies("/v1/traces"):
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            spans.extend(span for scope in resource_spans.scope_spans for span in scope.spans)
    return spans


def _attrs(span: Any) -> dict[str, Any]:
    values = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        values[kv.key] = getattr(kv.value, which) if which else None
    return values


def test_one_trace_per_request_from_ingress_to_prefill_to_decode_with_phase_joules(
    pd: dict[str, Any], receiver: OtlpReceiver
) -> None:
    requests = len(pd["bodies"])

    def complete() -> bool:  # three processes export on their own schedules: wait for all three
        names = [s.name.split(" ")[0] for s in _spans(receiver)]
        return all(names.count(kind) >= requests for kind in ("route", "prefill", "decode"))

    assert wait_until(complete, timeout_s=60)
    spans = _spans(receiver)
    by_trace: dict[bytes, list[Any]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    assert len(by_trace) == requests
    for trace in by_trace.values():
        names = sorted(s.name for s in trace)
        assert names == ["decode emulated-model", "prefill emulated-model", "route emulated-model"]
        (root,) = [s for s in trace if s.name.startswith("route")]
        for phase in ("prefill", "decode"):
            (span,) = [s for s in trace if s.name.startswith(phase)]
            assert span.parent_span_id == root.span_id
            attrs = _attrs(span)
            assert attrs[f"voltana.energy.{phase}.joules"] > 0
            assert attrs["voltana.energy.joules"] == attrs[f"voltana.energy.{phase}.joules"]


def test_a_bad_request_is_a_one_line_400(pd: dict[str, Any]) -> None:
    response = httpx.post(f"{pd['url']}/v1/completions", json={"model": "emulated-model"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "'prompt' is required"
