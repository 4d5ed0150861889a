"""Garbage input never reaches an engine and never gives a 500: a hand-written table of bad requests, each
answered with an OpenAI-style 4xx error naming the problem."""

from __future__ import annotations

import json

MODEL = "emulated-model"
OK_PROMPT = {"model": MODEL, "prompt": "hi"}
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

# (path, raw body or JSON value, expected status, words the message must contain)
CASES: list[tuple[str, object, int, str]] = [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", b"", 400, "empty"),
    ("/v1/completions", b"\xff\xfe\x00", 400, "not valid JSON"),
    ("/v1/completions", [1, 2, 3], 400, "JSON object"),
    ("/v1/completions", "a string", 400, "JSON object"),
    ("/v1/completions", None, 400, "JSON object"),
    ("/v1/completions", {"model": ["m"], "prompt": "hi"}, 400, "'model' is required"),
    ("/v1/completions", {"model": 7, "prompt": "hi"}, 400, "'model'"),
    ("/v1/completions", {"model": "gpt-9", "prompt": "hi"}, 404, "not served"),
    ("/v1/completions", {"model": MODEL}, 400, "'prompt' is required"),
    ("/v1/completions", {"model": MODEL, "prompt": 42}, 400, "'prompt'"),
    ("/v1/completions", {"model": MODEL, "prompt": []}, 400, "'prompt'"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, "a"]}, 400, "'prompt'"),
    ("/v1/completions", {"model": MODEL, "prompt": [-1]}, 400, "'prompt'"),
    ("/v1/completions", {**OK_PROMPT, "max_tokens": "ten"}, 400, "'max_tokens' must be a positive integer"),
    ("/v1/completions", {**OK_PROMPT, "max_tokens": 0}, 400, "positive integer"),
    ("/v1/completions", {**OK_PROMPT, "max_tokens": -5}, 400, "positive integer"),
    ("/v1/completions", {**OK_PROMPT, "max_tokens": 1.5}, 400, "positive integer"),
    ("/v1/completions", {**OK_PROMPT, "max_tokens": True}, 400, "positive integer"),
    ("/v1/completions", {**OK_PROMPT, "max_tokens": 10**12}, 400, "exceeds the limit of 8192"),
    ("/v1/completions", {**OK_PROMPT, "max_tokens": 10**400}, 400, "exceeds the limit"),
    ("/v1/completions", {**OK_PROMPT, "stream": "yes"}, 400, "'stream' must be a boolean"),
    ("/v1/completions", {**OK_PROMPT, "temperature": "hot"}, 400, "'temperature'"),
    ("/v1/completions", {**OK_PROMPT, "temperature": 9}, 400, "'temperature'"),
    ("/v1/completions", {**OK_PROMPT, "top_p": 0}, 400, "'top_p'"),
    ("/v1/completions", {**OK_PROMPT, "n": 0}, 400, "'n'"),
    ("/v1/completions", {**OK_PROMPT, "stop": [1]}, 400, "'stop'"),
    ("/v1/completions", {**OK_PROMPT, "stream_options": "x"}, 400, "'stream_options'"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "'messages'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "'messages'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "'messages'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": ["hi"]}, 400, "messages[0]"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "king", "content": "hi"}]}, 400, "role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "content"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": [3]}]},
        400,
        "content",
    ),
    ("/v1/chat/completions", {**OK_CHAT, "max_completion_tokens": 10**9}, 400, "max_completion_tokens"),
    ("/v1/chat/completions", {**OK_CHAT, "model": "nope"}, 404, "not served"),
    ("/v1/completions/extra", OK_PROMPT, 404, "Not Found"),
    ("/v1/embeddings", OK_PROMPT, 404, "Not Found"),
]


def test_bad_requests_get_clear_4xx_never_500(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 1)
    router = make_router(cluster)
    problems = []
    for path, body, status, words in CASES:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(router.url + path, content=raw, headers={"content-type": "application/json"})
        error = (
            response.json().get("error", {})
            if response.headers["content-type"].startswith("application/json")
            else {}
        )
        if response.status_code != status or words not in str(error.get("message")) or "type" not in error:
            problems.append(f"{path} {raw[:60]!r}: {response.status_code} {response.text[:160]}")
    assert not problems, "\n".join(problems)
    assert (
        sum(i.stats.completed + i.stats.errors for i in cluster.instances) == 0
    )  # nothing reached an engine
    # Wrong method and a huge body are 4xx too.
    assert client.get(router.url + "/v1/completions").status_code == 405
    huge = client.post(router.url + "/v1/completions", content=b"x" * (9 * 1024 * 1024))
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]


def test_engine_4xx_is_passed_through_not_retried(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 2)
    router = make_router(cluster, max_tokens_limit=10**6, served_models=[MODEL])
    too_long = {"model": MODEL, "prompt": "x" * 40000, "max_tokens": 10}  # 10000 prompt tokens > 8192
    response = client.post(router.url + "/v1/completions", json=too_long)
    assert response.status_code == 400 and "8192" in response.text
    assert all(i.admitted for i in router.state.registry)  # the request was at fault, not the instance
    assert sum(i.stats.errors for i in cluster.instances) == 1  # rejected once by prefill, no retry
