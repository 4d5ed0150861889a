"""The router in front of a real vLLM CPU prefill/decode pair (ExampleConnector shared-storage KV).

Completions through the router equal those of the decode instance used directly (greedy, float32), the
decode instance really loads the prefilled KV ("External Cache Hit!"), the router reads vLLM's Prometheus
load, and the official ``openai`` client works against the router, streaming included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.vllm_servers import VllmServer, running_pd_pair
from voltana.core.config import VoltanaConfig
from voltana.plugins import get_plugin_manager
from voltana.router.app import build_router_app
from voltana.router.serving import BackgroundLoop, bind_socket, start_server, stop_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = tuple(
    f"{word} "
    + "Energy efficient serving of large language models with prefill and decode disaggregation. " * 6
    for word in ("Alpha", "Bravo", "Charlie")
)
GREEDY: dict[str, Any] = {"temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def pd_router(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VllmServer, VllmServer, str, Any]]:
    work = tmp_path_factory.mktemp("router-vllm-pd")
    with running_pd_pair(tiny_model_dir, work / "logs", work / "kv-store") as (prefill, decode):
        router = {"backend": "vllm", "prefill": [prefill.url], "decode": [decode.url], "poll_interval_s": 0.2}
        config = VoltanaConfig(router=router)
        app = build_router_app(config, get_plugin_manager().hook)
        loop = BackgroundLoop()
        sock = bind_socket()
        server, task = loop.run(start_server(app, sock))
        try:
            yield prefill, decode, f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.router
        finally:
            loop.run(stop_server(server, task))
            loop.close()


def test_completions_through_router_equal_decode_instance_directly(pd_router) -> None:  # type: ignore[no-untyped-def]
    _, decode, router_url, _ = pd_router
    client = openai.OpenAI(base_url=router_url + "/v1", api_key="unused", max_retries=0)
    hits_before = decode.log_text().count("External Cache Hit!")
    for prompt in PROMPTS:
        routed = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, extra_body=GREEDY)
        direct = decode.completion(prompt, max_tokens=8, **GREEDY)
        assert routed.choices[0].text == direct["choices"][0]["text"]  # type: ignore[index]
        assert routed.usage is not None and routed.usage.completion_tokens == 8
    # The routed requests were prefilled on the prefill instance and their KV loaded by decode.
    assert decode.log_text().count("External Cache Hit!") >= hits_before + len(PROMPTS)


def test_openai_client_streaming_through_router(pd_router) -> None:  # type: ignore[no-untyped-def]
    _, decode, router_url, _ = pd_router
    client = openai.OpenAI(base_url=router_url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    prompt = PROMPTS[0]
    direct = decode.completion(prompt, max_tokens=6, **GREEDY)["choices"][0]["text"]  # type: ignore[index]
    stream = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=6, stream=True, extra_body=GREEDY
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == direct
    messages = [{"role": "user", "content": "Hello world, this is a tiny tokenizer"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, extra_body=GREEDY)  # type: ignore[arg-type]
    chunks = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=5,
        stream=True,
        extra_body=GREEDY,  # type: ignore[arg-type]
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == chat.choices[0].message.content
    )
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=100000)


def test_router_reads_vllm_metrics(pd_router) -> None:  # type: ignore[no-untyped-def]
    _, _, _, state = pd_router
    for inst in state.registry:
        assert inst.report is not None and inst.admitted
        assert inst.report.kv_capacity_tokens > 0  # from vllm:cache_config_info
        assert inst.models == {"tiny": 512}
