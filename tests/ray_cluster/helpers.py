"""Deploying the voltana P/D app on the test's Ray cluster and talking to it (helpers of the ``ray`` tier)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from voltana.emulator.responses import expected_text, prompt_key

# Small clusters on a shared 2-core machine: a tenth of a CPU per replica.
TEST_SETTINGS: dict[str, Any] = {
    "num_prefill": 2,
    "num_decode": 2,
    "replica_cpus": 0.1,
    "ingress_cpus": 0.1,
    "routing_stats_period_s": 0.2,
    "seed": 0,
}


@contextmanager
def deployed(name: str, config: dict[str, Any], port: int, **settings: Any) -> Iterator[str]:
    """Run the P/D app as Serve app ``name`` under ``/name``; yields its base URL, deletes it after."""
    from ray import serve

    from voltana.integrations.ray_serve.app import build_pd_app

    app = build_pd_app(config, {**TEST_SETTINGS, **settings})
    serve.run(app, name=name, route_prefix=f"/{name}")
    try:
        yield f"http://127.0.0.1:{port}/{name}"
    finally:
        serve.delete(name)


def request_body(
    index: int, *, chat: bool = False, stream: bool = False, max_tokens: int = 24
) -> dict[str, Any]:
    """A request with a prompt of its own (its length varies with ``index``)."""
    text = f"request {index}: " + "tell me about energy " * (1 + index % 5)
    body: dict[str, Any] = {"model": "emulated-model", "max_tokens": max_tokens, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def answer_text(response: httpx.Response, body: dict[str, Any]) -> str:
    """The generated text of a (streamed or not) completion; raises AssertionError on a malformed answer."""
    chat = "messages" in body
    if not body.get("stream"):
        choice = response.json()["choices"][0]
        return str(choice["message"]["content"] if chat else choice["text"])
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", f"stream did not end with [DONE]: {events[-2:]}"
    parts = []
    for event in events[:-1]:
        choice = json.loads(event)["choices"][0]
        parts.append((choice["delta"].get("content") or "") if chat else choice["text"])
    return "".join(parts)


def expected_answer(body: dict[str, Any]) -> str:
    """What the emulated engines answer for ``body`` (a pure function of the prompt)."""
    return expected_text(prompt_key(body), int(body["max_tokens"]))


async def send_all(
    base_url: str, bodies: Sequence[dict[str, Any]], timeout_s: float = 120.0
) -> list[httpx.Response | BaseException]:
    """POST every body concurrently; each result is a response or the exception it raised."""
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s) as client:

        async def one(body: dict[str, Any]) -> httpx.Response:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            return await client.post(path, json=body)

        return list(await asyncio.gather(*(one(b) for b in bodies), return_exceptions=True))
