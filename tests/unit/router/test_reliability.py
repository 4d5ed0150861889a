"""Faults: a decode instance killed mid-stream, one slowed 10x, one answering 500s, a dead prefill, client
disconnects, saturation and timeouts. No request may be lost silently: it completes elsewhere or fails with a
clear error; dead instances are ejected and re-admitted when they come back."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import openai
import pytest

from voltana.emulator.responses import expected_text

MODEL = "emulated-model"


def wait_for(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def complete(client: httpx.Client, url: str, prompt: str, max_tokens: int = 4) -> httpx.Response:
    return client.post(
        url + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}
    )


def test_killed_decode_mid_stream_ends_with_clear_error_then_ejected_and_readmitted(
    make_cluster, make_router, bg
) -> None:
    cluster = make_cluster("vllm", 1, 2, time_scale=1.0)  # real-time decode steps (~10 ms)
    router = make_router(cluster, eject_after_failures=1, readmit_after_successes=2)
    registry = router.state.registry
    oai = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    stream = oai.completions.create(model=MODEL, prompt="a long story", max_tokens=400, stream=True)
    first = next(iter(stream))
    victim = next(i for i in cluster.decode if i.engine is not None and i.engine.running)
    victim_id = next(i.instance_id for i in registry if i.url == victim.url)
    bg.run(victim.kill())
    with pytest.raises(openai.APIError) as failure:
        for _ in stream:
            pass
    assert "failed mid-stream" in str(failure.value)
    assert first.choices[0].text
    # Ejected (counted, not read from ``admitted``: on a loaded machine the 1 s quarantine can end, and the
    # probes re-admit the instance, before this line runs).
    assert registry.by_id[victim_id].ejections == 1
    # Everything still works on the survivor, and non-streamed requests never see the dead one.
    with httpx.Client(trust_env=False, timeout=10) as c:
        for i in range(5):
            answer = complete(c, router.url, f"after {i}")
            assert answer.status_code == 200
            assert answer.json()["choices"][0]["text"] == expected_text(f"after {i}", 4)
    bg.run(victim.start())  # back on the same port
    wait_for(lambda: registry.by_id[victim_id].admitted)


def test_decode_killed_before_output_is_retried_elsewhere(make_cluster, make_router, client, bg) -> None:
    cluster = make_cluster("vllm", 1, 2)
    router = make_router(cluster, eject_after_failures=5)
    bg.run(cluster.decode[0].kill())  # not yet noticed by the poller: requests still get routed there
    for i in range(6):
        answer = complete(client, router.url, f"retry {i}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"] == expected_text(f"retry {i}", 4)
    assert cluster.decode[1].stats.completed == 6


def test_instance_returning_500s_is_ejected_and_requests_complete_elsewhere(
    make_cluster, make_router, client
) -> None:
    cluster = make_cluster("vllm", 1, 3)
    router = make_router(cluster, eject_after_failures=2, policy={"decode_route": "round-robin"})
    cluster.decode[1].faults.error_status = 500
    for i in range(12):
        answer = complete(client, router.url, f"five hundred {i}")
        assert answer.status_code == 200, answer.text
    broken = next(i for i in router.state.registry if i.url == cluster.decode[1].url)
    assert broken.ejections >= 1
    # Ejected after 2 failures; each re-admission after its (doubling) quarantine costs one more failure.
    assert cluster.decode[1].stats.errors <= 2 + broken.ejections
    assert cluster.decode[0].stats.completed + cluster.decode[2].stats.completed == 12


def test_every_instance_refusing_gives_503_with_retry_after(make_cluster, make_router, client) -> None:
    """Every engine tried answered 503 (busy, starting): the client gets 503 + Retry-After, not a 502."""
    cluster = make_cluster("vllm", 1, 2)
    router = make_router(cluster, eject_after_failures=50, max_retries=3)
    for inst in cluster.decode:
        inst.faults.error_status = 503
    answer = complete(client, router.url, "doomed")
    assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1
    error = answer.json()["error"]
    assert (
        "decode-0" in error["message"] and "decode-1" in error["message"] and "HTTP 503" in error["message"]
    )


def test_dead_prefill_is_retried_on_another(make_cluster, make_router, client, bg) -> None:
    cluster = make_cluster("vllm", 2, 1)
    router = make_router(cluster, policy={"prefill_route": "round-robin"})
    bg.run(cluster.prefill[0].kill())
    for i in range(4):
        assert complete(client, router.url, f"prefill retry {i}").status_code == 200
    assert cluster.prefill[1].stats.completed == 4


def test_slow_instance_10x_everything_completes(make_cluster, make_router) -> None:
    cluster = make_cluster("vllm", 1, 3, time_scale=0.1)
    router = make_router(cluster)
    cluster.decode[0].faults.slowdown = 10.0
    prompts = [f"slow {i}" for i in range(60)]
    limits = httpx.Limits(max_connections=30)
    with (
        httpx.Client(trust_env=False, timeout=30, limits=limits) as c,
        concurrent.futures.ThreadPoolExecutor(16) as pool,
    ):
        answers = list(pool.map(lambda p: complete(c, router.url, p, 8), prompts))
    assert [a.status_code for a in answers] == [200] * 60
    assert [a.json()["choices"][0]["text"] for a in answers] == [expected_text(p, 8) for p in prompts]
    served = [i.stats.completed for i in cluster.decode]
    assert sum(served) == 60
    assert served[0] < max(served[1:])  # the least-loaded policy sends less to the slow one


def test_timeout_is_bounded_and_reported(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 1, time_scale=1.0)
    router = make_router(cluster, request_timeout_s=0.3, max_retries=0)
    cluster.decode[0].faults.slowdown = 1000.0
    start = time.monotonic()
    answer = complete(client, router.url, "never fast enough", 50)
    assert time.monotonic() - start < 5
    assert answer.status_code == 502 and "timed out" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("protocol", "stream"), [("vllm", False), ("vllm", True), ("sglang", False), ("sglang", True)]
)
def test_client_disconnect_cancels_engine_work(make_cluster, make_router, protocol, stream) -> None:
    cluster = make_cluster(protocol, 1, 1, time_scale=1.0)
    router = make_router(cluster)
    decode = cluster.decode[0]
    body = {"model": MODEL, "prompt": "abandon me", "max_tokens": 2000, "stream": stream}
    with httpx.Client(trust_env=False) as c:
        if stream:
            with c.stream("POST", router.url + "/v1/completions", json=body) as response:
                next(response.iter_bytes())
        else:
            with pytest.raises(httpx.ReadTimeout):
                c.post(router.url + "/v1/completions", json=body, timeout=0.5)
    wait_for(lambda: decode.stats.aborted == 1)
    assert decode.engine is not None and not decode.engine.running
    wait_for(lambda: router.state.registry.by_id["decode-0"].inflight == 0)


def test_saturated_instances_get_a_clear_429(make_cluster, make_router) -> None:
    cluster = make_cluster("vllm", 1, 1, time_scale=1.0)
    router = make_router(cluster, max_inflight_per_instance=2)
    body = {"model": MODEL, "prompt": "hold", "max_tokens": 100, "stream": True}
    with httpx.Client(trust_env=False, timeout=10) as c:  # noqa: SIM117 - the streams stay open while the third runs
        with c.stream("POST", router.url + "/v1/completions", json=body) as r1:
            with c.stream("POST", router.url + "/v1/completions", json=body) as r2:
                open_streams = [
                    r1.iter_bytes(),
                    r2.iter_bytes(),
                ]  # kept: a dropped iterator closes its stream
                assert all(next(events) for events in open_streams)
                third = complete(c, router.url, "one too many")
    assert third.status_code == 429
    assert third.headers["retry-after"] == "1"
    assert "saturated" in third.json()["error"]["message"]
    assert third.json()["error"]["type"] == "rate_limit_error"


def test_no_healthy_instance_is_a_503(make_cluster, make_router, client, bg) -> None:
    cluster = make_cluster("vllm", 1, 1)
    router = make_router(cluster, eject_after_failures=1)
    bg.run(cluster.decode[0].kill())
    wait_for(lambda: not router.state.registry.by_id["decode-0"].admitted)
    answer = complete(client, router.url, "nobody home")
    assert answer.status_code == 503
    assert "no healthy decode instance" in answer.json()["error"]["message"]
    health = client.get(router.url + "/health")
    assert health.status_code == 503 and json.loads(health.text)["instances"]["decode"] == 0
