"""The official ``openai`` client against the router (emulated engines), and a bounded load run: every
request answered exactly once, correctly, none lost, none duplicated."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import openai
import pytest

from voltana.emulator.responses import expected_text, prompt_key

MODEL = "emulated-model"


@pytest.mark.parametrize("protocol", ["vllm", "sglang"])
def test_openai_client_streaming_and_not(make_cluster, make_router, protocol) -> None:
    cluster = make_cluster(protocol, 1, 2)
    router = make_router(cluster)
    oai = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in oai.models.list()] == [MODEL]
    completion = oai.completions.create(model=MODEL, prompt="Once upon", max_tokens=6)
    assert completion.choices[0].text == expected_text("Once upon", 6)
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    chunks = oai.completions.create(model=MODEL, prompt="Once", max_tokens=5, stream=True)
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == expected_text("Once", 5)
    messages = [{"role": "user", "content": "Hello there"}]
    chat = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == expected_text(prompt_key({"messages": messages}), 4)
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(prompt_key({"messages": messages}), 4)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError, match="not served"):
        oai.completions.create(model="other-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        oai.completions.create(model=MODEL, prompt="x", max_tokens=10**9)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["vllm", "sglang"])
def test_bounded_load_no_request_lost_or_duplicated(make_cluster, make_router, bg, protocol) -> None:
    cluster = make_cluster(protocol, 2, 6, time_scale=0.01)
    router = make_router(
        cluster,
        connect_timeout_s=10.0,
        policy={"decode_route": "ecoroute", "prefill_route": "predicted-ttft"},
    )
    total, concurrency = 200, 48  # bounded for the unit tier; benchmarks/bench_router.py runs 2000 x 256

    async def run() -> list[tuple[str, int, str]]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=router.url, limits=limits, timeout=60, trust_env=False
        ) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> tuple[str, int, str]:
                request_id = f"load-{i}"
                body = {"model": MODEL, "prompt": f"load test prompt {i}", "max_tokens": 4 + i % 5,
                        "stream": i % 2 == 0}  # fmt: skip
                async with gate:
                    response = await client.post(
                        "/v1/completions", json=body, headers={"x-request-id": request_id}
                    )
                if body["stream"]:
                    text = "".join(
                        json.loads(line[6:])["choices"][0]["text"]
                        for line in response.text.splitlines()
                        if line.startswith("data: {")
                    )
                else:
                    text = (
                        response.json()["choices"][0]["text"]
                        if response.status_code == 200
                        else response.text
                    )
                return request_id, response.status_code, text

            return await asyncio.gather(*(one(i) for i in range(total)))

    results = bg.run(run(), timeout_s=120)
    assert [status for _, status, _ in results] == [200] * total
    assert [text for _, _, text in results] == [
        expected_text(f"load test prompt {i}", 4 + i % 5) for i in range(total)
    ]
    served: Counter[str] = Counter()
    for inst in cluster.decode:
        served.update(inst.stats.served_ids)
    assert served == Counter({f"load-{i}": 1 for i in range(total)})  # each decoded exactly once
    assert sum(i.stats.completed for i in cluster.prefill) == total
    assert all(i.inflight == 0 for i in router.state.registry)
