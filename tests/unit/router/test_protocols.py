"""The P/D wire protocols end to end: router -> emulated vLLM / SGLang instances that check the protocol."""

from __future__ import annotations

import json

import httpx
import pytest

from voltana.emulator.responses import expected_text, prompt_key

MODEL = "emulated-model"


def sse_text(raw: str, chat: bool = False) -> tuple[str, bool]:
    """(concatenated text, saw [DONE]) of an OpenAI event stream."""
    text, done = [], False
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
            continue
        for choice in json.loads(data)["choices"]:
            part = choice["delta"].get("content") if chat else choice["text"]
            text.append(part or "")
    return "".join(text), done


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_nixl_decode_uses_kv_from_prefill(make_cluster, make_router, client, stream) -> None:
    cluster = make_cluster("vllm", 2, 2)
    router = make_router(cluster)
    prompts = [f"request number {i} about energy" for i in range(6)]
    for prompt in prompts:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 7, "stream": stream}
        response = client.post(router.url + "/v1/completions", json=body)
        assert response.status_code == 200, response.text
        text = sse_text(response.text)[0] if stream else response.json()["choices"][0]["text"]
        assert text == expected_text(prompt, 7)
    prefill_done = sum(i.stats.completed for i in cluster.prefill)
    hits = sum(i.stats.remote_prefill_hits for i in cluster.decode)
    assert prefill_done == 6 and hits == 6
    assert sum(i.stats.kv_misses + i.stats.local_prefills for i in cluster.decode) == 0
    assert not cluster.bus.transfers  # every handed-out KV was consumed exactly once


def test_vllm_through_router_equals_decode_instance_directly(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 1)
    router = make_router(cluster)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something"}], "max_tokens": 9}
    routed = client.post(router.url + "/v1/chat/completions", json=body).json()
    direct = client.post(cluster.decode[0].url + "/v1/chat/completions", json=body).json()
    assert routed["choices"][0]["message"] == direct["choices"][0]["message"]
    assert routed["usage"] == direct["usage"]
    assert cluster.decode[0].stats.remote_prefill_hits == 1  # routed: KV from prefill
    assert cluster.decode[0].stats.local_prefills == 1  # direct: computed locally


def test_vllm_shared_storage_connector_exchanges_nothing(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 2, connector="shared-storage")
    router = make_router(cluster, kv_transfer_params=False)
    for i in range(4):
        body = {"model": MODEL, "prompt": f"shared {i}", "max_tokens": 3}
        answer = client.post(router.url + "/v1/completions", json=body).json()
        assert answer["choices"][0]["text"] == expected_text(f"shared {i}", 3)
        assert answer.get("kv_transfer_params") is None
    assert sum(i.stats.external_cache_hits for i in cluster.decode) == 4
    assert sum(i.stats.local_prefills for i in cluster.decode) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_sglang_bootstrap_pair(make_cluster, make_router, client, stream) -> None:
    cluster = make_cluster("sglang", 2, 2)
    router = make_router(cluster)
    for i in range(6):
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"}]
        body = {"model": MODEL, "messages": messages, "max_tokens": 5, "stream": stream}
        response = client.post(router.url + "/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        if stream:
            text, done = sse_text(response.text, chat=True)
            assert done
        else:
            text = response.json()["choices"][0]["message"]["content"]
        assert text == expected_text(prompt_key({"messages": messages}), 5)
    assert sum(i.stats.completed for i in cluster.prefill) == 6
    assert sum(i.stats.remote_prefill_hits for i in cluster.decode) == 6
    assert sum(i.stats.errors for i in cluster.instances) == 0
    assert not cluster.bus.rooms  # every room was published by its prefill and consumed by its decode


def test_sglang_decode_refuses_missing_or_unpublished_room(make_cluster, bg) -> None:
    cluster = make_cluster("sglang", 1, 1, bootstrap_timeout_s=0.3)
    decode = cluster.decode[0]
    with httpx.Client(trust_env=False) as c:
        missing = c.post(decode.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert missing.status_code == 400 and "bootstrap_room" in missing.text
        fields = {"bootstrap_host": "127.0.0.1", "bootstrap_port": 8998, "bootstrap_room": 12345}
        orphan = c.post(decode.url + "/v1/completions", json={"model": MODEL, "prompt": "x", **fields})
        assert orphan.status_code == 500 and "timed out" in orphan.text
        wrong = c.post(cluster.prefill[0].url + "/v1/completions", json={"model": MODEL, "prompt": "x",
                       **dict(fields, bootstrap_port=1)})  # fmt: skip
        assert wrong.status_code == 400 and "not this server" in wrong.text


def test_sglang_rooms_are_random_63_bit(make_cluster, make_router, client) -> None:
    cluster = make_cluster("sglang", 1, 1)
    router = make_router(cluster)
    seen: list[int] = []
    original = cluster.bus.room

    def spy(host: str, port: int, room: int):  # type: ignore[no-untyped-def]
        seen.append(room)
        return original(host, port, room)

    cluster.bus.room = spy  # type: ignore[method-assign]
    for i in range(5):
        client.post(router.url + "/v1/completions", json={"model": MODEL, "prompt": f"p{i}", "max_tokens": 2})
    rooms = set(seen)
    assert len(rooms) == 5 and all(0 <= r < 2**63 for r in rooms)
    assert max(rooms) > 2**40  # drawn from the whole 63-bit range, not a counter
