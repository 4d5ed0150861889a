"""Admin API behind the bearer token, Prometheus /metrics, OpenTelemetry spans with W3C trace context
propagated to the engines, /v1/models and /health."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

MODEL = "emulated-model"
TOKEN = "s3cret-token"


def complete(client, url: str, prompt: str, **extra):  # type: ignore[no-untyped-def]
    return client.post(
        url + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2, **extra}
    )


def test_admin_api_needs_configured_bearer_token(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 2)
    closed = make_router(cluster)
    assert client.get(closed.url + "/admin/instances").status_code == 403
    router = make_router(cluster, admin_token=TOKEN)
    assert client.get(router.url + "/admin/instances").status_code == 401
    wrong = client.get(router.url + "/admin/instances", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "Bearer" in wrong.json()["error"]["message"]
    listing = client.get(router.url + "/admin/instances", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert {row["id"] for row in listing["instances"]} == {"prefill-0", "decode-0", "decode-1"}
    assert listing["policies"] == {"prefill": "round-robin", "decode": "least-loaded"}


def test_admin_changes_policy_and_drains_an_instance(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 2)
    router = make_router(cluster, admin_token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    bad = client.post(router.url + "/admin/policy", json={"decode": "no-such-policy"}, headers=auth)
    assert bad.status_code == 400 and "round-robin" in bad.json()["error"]["message"]
    changed = client.post(router.url + "/admin/policy", json={"decode": "round-robin"}, headers=auth)
    assert changed.json()["policies"]["decode"] == "round-robin"
    drained = client.post(router.url + "/admin/instances/decode-0/drain", headers=auth)
    assert drained.status_code == 200 and drained.json()["draining"] is True
    for i in range(6):
        assert complete(client, router.url, f"drain {i}").status_code == 200
    assert cluster.decode[0].stats.completed == 0 and cluster.decode[1].stats.completed == 6
    client.post(router.url + "/admin/instances/decode-0/resume", headers=auth)
    for i in range(4):
        complete(client, router.url, f"resumed {i}")
    assert cluster.decode[0].stats.completed == 2  # round-robin again over both
    missing = client.post(router.url + "/admin/instances/decode-9/drain", headers=auth)
    assert missing.status_code == 404


def test_prometheus_metrics(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 2)
    router = make_router(cluster)
    for i in range(4):
        complete(client, router.url, f"metric {i}")
    client.post(router.url + "/v1/completions", content=b"garbage")
    families = {f.name: f for f in text_string_to_metric_families(client.get(router.url + "/metrics").text)}
    samples = [s for s in families["voltana_router_requests"].samples if s.name.endswith("_total")]
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value for s in samples}
    assert requests == {("completions", "200"): 4, ("completions", "400"): 1}
    decisions = [s for s in families["voltana_router_routing_decisions"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in decisions if s.labels["phase"] == "decode") == 4
    assert {s.labels["policy"] for s in decisions} == {"round-robin", "least-loaded"}
    added = {s.name: s.value for s in families["voltana_router_added_latency_seconds"].samples}
    assert added["voltana_router_added_latency_seconds_count"] == 4
    assert added["voltana_router_added_latency_seconds_sum"] > 0
    errors = {
        s.labels["kind"]: s.value
        for s in families["voltana_router_errors"].samples
        if s.name.endswith("_total")
    }
    assert errors["bad_request"] == 1
    admitted = {s.labels["instance"]: s.value for s in families["voltana_router_instance_admitted"].samples}
    assert admitted == {"prefill-0": 1, "decode-0": 1, "decode-1": 1}


@pytest.mark.parametrize("stream", [False, True])
def test_spans_and_w3c_trace_context_reach_the_engines(make_cluster, make_router, client, stream) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cluster = make_cluster("vllm", 1, 1)
    router = make_router(cluster, tracer_provider=provider)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    response = client.post(
        router.url + "/v1/completions",
        json={"model": MODEL, "prompt": "traced", "max_tokens": 2, "stream": stream},
        headers=incoming,
    )
    assert response.status_code == 200
    provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/completions", "voltana.router.prefill", "voltana.router.decode"}
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {trace_id}
    server = spans["POST /v1/completions"]
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    for phase, inst in (("prefill", cluster.prefill[0]), ("decode", cluster.decode[0])):
        child = spans[f"voltana.router.{phase}"]
        assert child.parent.span_id == server.context.span_id
        sent = inst.stats.traceparents[-1]
        assert sent == f"00-{trace_id}-{format(child.context.span_id, '016x')}-01"
        assert child.attributes["voltana.instance.id"] == f"{phase}-0"


def test_models_and_health(make_cluster, make_router, client) -> None:
    cluster = make_cluster("sglang", 1, 1)
    router = make_router(cluster)
    models = client.get(router.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 8192
    health = client.get(router.url + "/health")
    assert health.status_code == 200 and health.json()["instances"] == {"prefill": 1, "decode": 1}
