"""Inputs from the field (issue 18): each kind tried as a user would, through the router in front of emulated
vLLM and SGLang P/D pairs on loopback. Every test here failed before the fix it names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.tiny_model import train_bpe_tokenizer
from voltana.emulator.responses import expected_text

MODEL = "emulated-model"
PROTOCOLS = ["vllm", "sglang"]


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def engine_calls(cluster: Any) -> int:
    """Generation requests any emulated engine answered (200 or error)."""
    return sum(i.stats.completed + i.stats.errors for i in cluster.instances)


# --- item 1: n > 1 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("name", "stream"), [("n", False), ("n", True), ("best_of", False)])
def test_more_than_one_sample_is_refused_with_400_naming_it(
    make_cluster, make_router, client, protocol, name, stream
) -> None:
    cluster = make_cluster(protocol, 1, 1)
    router = make_router(cluster)
    body = {"model": MODEL, "prompt": "two please", "max_tokens": 4, name: 2, "stream": stream}
    answer = client.post(router.url + "/v1/completions", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == name and f"'{name}' = 2" in error["message"]
    assert engine_calls(cluster) == 0  # refused before any engine call
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 3}
    assert client.post(router.url + "/v1/chat/completions", json=chat).json()["error"]["param"] == "n"
    one = client.post(router.url + "/v1/completions", json={**body, name: 1, "stream": False})
    assert one.status_code == 200 and one.json()["choices"][0]["text"] == expected_text("two please", 4)


# --- item 2: requests that cannot fit the model ----------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_token_id_prompt_over_the_model_length_is_refused_before_prefill(
    make_cluster, make_router, client, protocol
) -> None:
    cluster = make_cluster(protocol, 1, 1)  # max_model_len 8192, as in the report
    router = make_router(cluster, max_tokens_limit=10**6)
    body = {"model": MODEL, "prompt": [7] * 8192, "max_tokens": 500}
    answer = client.post(router.url + "/v1/completions", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "8192" in error["message"] and "token ids" in error["message"]
    assert engine_calls(cluster) == 0  # no prefill ran
    batch = {"model": MODEL, "prompt": [[7] * 100, [7] * 8192], "max_tokens": 5}  # the longest counts
    assert client.post(router.url + "/v1/completions", json=batch).status_code == 400
    fits = client.post(router.url + "/v1/completions", json={**body, "prompt": [7] * 8000, "max_tokens": 192})
    assert fits.status_code == 200, fits.text
    assert fits.headers["x-voltana-prompt-tokens"] == "8000; source=exact"


# Item 5 of the QA report: the router refuses exactly what the engine refuses. vLLM refuses a prompt that
# leaves no room for one token and clamps a larger max_tokens (absent: its defaults); SGLang also refuses
# prompt + max_tokens over the context (completions default 16). The emulator follows the same rules.
@pytest.mark.parametrize(
    ("protocol", "max_tokens", "expected"),
    [
        ("vllm", 500, 200),  # clamped to the 192 tokens left
        ("vllm", None, 200),  # completions default 16, clamped
        ("sglang", 500, 400),
        ("sglang", None, 400),  # default 16 does not fit the 2 tokens left
        ("sglang", 192, 200),
    ],
)
def test_model_length_rule_is_the_engines(
    make_cluster, make_router, client, protocol, max_tokens, expected
) -> None:
    cluster = make_cluster(protocol, 1, 1)
    router = make_router(cluster, max_tokens_limit=10**6)
    prompt_len = 8000 if max_tokens != None or protocol == "vllm" else 8190  # noqa: E711
    body: dict[str, Any] = {"model": MODEL, "prompt": [7] * prompt_len}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    before = engine_calls(cluster)
    answer = client.post(router.url + "/v1/completions", json=body)
    assert answer.status_code == expected, answer.text
    if expected == 400:
        assert answer.json()["error"]["code"] == "context_length_exceeded"
        assert engine_calls(cluster) == before  # refused by the router, not after a prefill
        # The emulated engine refuses the same request for its length (what the router refuses, it would).
        direct = client.post(cluster.instances[-1].url + "/v1/completions", json=body)
        assert direct.status_code == 400 and "maximum" in direct.text, direct.text
    else:
        usage = answer.json()["usage"]
        assert usage["completion_tokens"] <= 8192 - prompt_len


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_bpe_tokenizer().save(str(path))
    return path


def test_text_prompt_is_counted_with_the_local_tokenizer(
    make_cluster, make_router, client, tokenizer_file
) -> None:
    cluster = make_cluster("vllm", 1, 1)
    for inst in cluster.instances:
        inst.max_model_len = 1024
    # 1,600 tokens with the model's tokenizer; the characters / 4 estimate says 400.
    body = {"model": MODEL, "prompt": "zq" * 800, "max_tokens": 100}
    with_tokenizer = make_router(cluster, tokenizer=str(tokenizer_file))
    answer = client.post(with_tokenizer.url + "/v1/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert "prompt has 1600 tokens (counted from the model's tokenizer)" in answer.json()["error"]["message"]
    assert engine_calls(cluster) == 0
    near = client.post(with_tokenizer.url + "/v1/completions", json={**body, "prompt": "zq" * 511 + "z"})
    assert near.status_code == 200 and near.headers["x-voltana-prompt-tokens"] == "1023; source=tokenizer"
    # A prompt whose every byte could be a token and still fits is not tokenized: the bound decides.
    short = client.post(with_tokenizer.url + "/v1/completions", json={**body, "prompt": "zq" * 10})
    assert short.headers["x-voltana-prompt-tokens"] == "5; source=estimate"
    metrics = client.get(with_tokenizer.url + "/metrics").text
    assert 'voltana_router_prompt_token_counts_total{source="tokenizer"} 2.0' in metrics
    # Without a tokenizer the estimate never refuses: the engine decides (and this one estimates too).
    estimate_only = make_router(cluster)
    passed = client.post(estimate_only.url + "/v1/completions", json=body)
    assert passed.status_code == 200 and passed.headers["x-voltana-prompt-tokens"] == "400; source=estimate"


class CountingTokenizer:
    """The tiny model's tokenizer, recording which prompts it had to tokenize."""

    def __init__(self, path: Path) -> None:
        from voltana.router.tokens import HfPromptTokenizer

        self.inner = HfPromptTokenizer(path)
        self.max_chars_per_token = self.inner.max_chars_per_token
        self.special_tokens = self.inner.special_tokens
        self.seen: list[int] = []

    def count_texts(self, texts: list[str]) -> list[int]:
        self.seen.extend(len(t) for t in texts)
        return self.inner.count_texts(texts)


def test_huge_text_prompt_is_refused_by_its_length_without_tokenizing(tokenizer_file) -> None:
    from voltana.router.errors import RouterError
    from voltana.router.tokens import count_for_length_check
    from voltana.router.validation import parse_request

    tokenizer = CountingTokenizer(tokenizer_file)
    models = {MODEL: 2048}
    huge = parse_request("completions", {"model": MODEL, "prompt": "hello world " * 600_000}, models, 10**6)
    with pytest.raises(RouterError) as info:
        asyncio.run(count_for_length_check(huge, tokenizer, 2048, 1))
    assert info.value.status == 400 and "at least" in info.value.message
    small = parse_request("completions", {"model": MODEL, "prompt": "hello " * 100}, models, 10**6)
    assert asyncio.run(count_for_length_check(small, tokenizer, 2048, 1)) is small
    assert tokenizer.seen == []  # the bounds decided both: nothing tokenized


def test_tokenizing_a_long_prompt_does_not_block_other_requests(tokenizer_file) -> None:
    """A short request sent next to a prompt being tokenized finishes first (the event loop keeps running:
    the tokenizer must release the GIL in its worker thread)."""
    from voltana.router.tokens import count_for_length_check
    from voltana.router.validation import parse_request

    tokenizer = CountingTokenizer(tokenizer_file)
    model_len = 600_000  # = the prompt's bytes: the bounds cannot decide, the prompt gets tokenized
    big = parse_request("completions", {"model": MODEL, "prompt": "zq " * 200_000}, {MODEL: model_len}, 10**9)
    finished: list[str] = []

    async def long() -> None:
        await count_for_length_check(big, tokenizer, model_len, 1)
        finished.append("long")

    async def short() -> None:
        for _ in range(50):  # a short request's worth of event-loop turns, each waiting on a timer
            await asyncio.sleep(0.001)
        finished.append("short")

    async def both() -> None:
        await asyncio.gather(long(), short())

    asyncio.run(both())
    assert tokenizer.seen == [len(big.body["prompt"])]
    assert finished == ["short", "long"]


def test_unloadable_tokenizer_is_one_config_line(make_cluster, make_router, tmp_path) -> None:
    from voltana.core.config import ConfigError

    cluster = make_cluster("vllm", 1, 1)
    (tmp_path / "tokenizer.json").write_text("{not json")
    for path, words in ((tmp_path / "absent", "no tokenizer.json"), (tmp_path, "cannot load")):
        with pytest.raises(ConfigError) as info:
            make_router(cluster, tokenizer=str(path))
        assert words in str(info.value) and "\n" not in str(info.value)


# --- item 3: energy back to the client -------------------------------------------------------------------
def energy_records(cluster: Any, request_id: str) -> dict[str, float]:
    return {
        f"{inst.role}_j": inst.stats.energy_j[request_id]
        for inst in cluster.instances
        if request_id in inst.stats.energy_j
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_report_energy_puts_joules_per_phase_in_usage(make_cluster, make_router, client, protocol) -> None:
    cluster = make_cluster(protocol, 1, 1)
    router = make_router(cluster, report_energy=True)
    body = {"model": MODEL, "prompt": "how much energy", "max_tokens": 6}
    answer = client.post(router.url + "/v1/completions", json=body)
    assert answer.status_code == 200
    energy = answer.json()["usage"]["voltana_energy"]
    recorded = energy_records(cluster, answer.headers["x-request-id"])
    assert set(recorded) == {"prefill_j", "decode_j"} and all(j > 0 for j in recorded.values())
    assert energy == {**recorded, "total_j": pytest.approx(sum(recorded.values()))}
    assert answer.json()["choices"][0]["text"] == expected_text("how much energy", 6)

    # The last chunk of a stream with include_usage carries it too.
    with client.stream(
        "POST",
        router.url + "/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as streamed:
        events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
        request_id = streamed.headers["x-request-id"]
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert (
        usage_chunk["usage"]["voltana_energy"]["decode_j"] == energy_records(cluster, request_id)["decode_j"]
    )
    assert all("voltana_energy" not in (json.loads(e).get("usage") or {}) for e in events[:-2])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_energy_lookup_escapes_the_client_request_id(make_cluster, make_router, client, protocol) -> None:
    """QA report: ``dup1?`` got another request's joules, ``abc/def``, ``a%2Fb`` and non-ASCII ids none,
    ``../../v1/models`` made the router GET /v1/models. Each id now gets exactly its own record."""
    cluster = make_cluster(protocol, 1, 1)
    router = make_router(cluster, report_energy=True)
    body = {"model": MODEL, "prompt": "whose energy", "max_tokens": 3}
    client.post(router.url + "/v1/completions", json=body, headers={"x-request-id": "dup1"})
    for request_id in ("dup1?", "abc/def", "a%2Fb", "h\u00e9-\u6f22", "../../v1/models", "..", "x#y", "a b"):
        raw = request_id.encode()  # an HTTP header is bytes; servers read it as Latin-1
        answer = client.post(router.url + "/v1/completions", json=body, headers={"x-request-id": raw})
        assert answer.status_code == 200, (request_id, answer.text)
        recorded = energy_records(cluster, raw.decode("latin-1"))
        assert set(recorded) == {"prefill_j", "decode_j"}, request_id
        energy = answer.json()["usage"]["voltana_energy"]
        assert {k: energy[k] for k in recorded} == recorded, request_id


class NoRecords(dict):  # type: ignore[type-arg]
    """An engine that keeps no per-request records (as one without voltana's endpoint)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return


def test_energy_is_absent_when_unknown_never_guessed(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 1)
    off = make_router(cluster)
    body = {"model": MODEL, "prompt": "no energy asked", "max_tokens": 3}
    assert "voltana_energy" not in client.post(off.url + "/v1/completions", json=body).json()["usage"]
    router = make_router(cluster, report_energy=True)
    cluster.prefill[0].stats.energy_j = NoRecords()
    partial = client.post(router.url + "/v1/completions", json=body).json()["usage"]["voltana_energy"]
    assert set(partial) == {"decode_j"}  # no prefill_j, hence no total_j
    cluster.decode[0].stats.energy_j = NoRecords()
    assert "voltana_energy" not in client.post(router.url + "/v1/completions", json=body).json()["usage"]


class LateRecords(dict):  # type: ignore[type-arg]
    """An engine that publishes its records a little late (as vLLM does under load, every 0.25 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[Any] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self.asked:
            self.asked.add(key)
            return default
        return super().get(key, default)


def test_energy_record_published_late_is_still_reported(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 1)
    router = make_router(cluster, report_energy=True)
    cluster.decode[0].stats.energy_j = late = LateRecords()
    answer = client.post(
        router.url + "/v1/completions", json={"model": MODEL, "prompt": "late", "max_tokens": 3}
    )
    energy = answer.json()["usage"]["voltana_energy"]
    assert energy["decode_j"] == late[answer.headers["x-request-id"]] > 0 and "total_j" in energy


# --- item 4: poison requests, stale connections, stalls, vLLM-compatible inputs ---------------------------
@pytest.mark.parametrize(("num_prefill", "killed"), [(2, 1), (3, 2)])
def test_poison_request_is_not_spread_over_every_instance(
    make_cluster, make_router, client, num_prefill, killed
) -> None:
    cluster = make_cluster("vllm", num_prefill, 1)
    router = make_router(cluster, max_retries=5, eject_after_failures=1)
    for inst in cluster.prefill:
        inst.faults.poison_prompt = "x"  # this one-token prompt kills any engine it reaches
    answer = client.post(router.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "engine_failed"
    assert "not retried" in answer.json()["error"]["message"]
    dead = [inst for inst in cluster.prefill if inst.faults.error_status == 500]
    assert len(dead) == killed < num_prefill  # at most one retry, and one instance never saw it
    fine = client.post(
        router.url + "/v1/completions", json={"model": MODEL, "prompt": "fine", "max_tokens": 2}
    )
    assert fine.status_code == 200 and fine.json()["choices"][0]["text"] == expected_text("fine", 2)


class ExpiringProxy:
    """A TCP relay in front of an engine that drops idle client connections the way a closing keep-alive
    races with a new request: data arriving on a connection idle for more than ``expiry_s`` is answered
    with a reset, unread (the engine never sees it)."""

    def __init__(self, target_port: int, expiry_s: float) -> None:
        self.target_port = target_port
        self.expiry_s = expiry_s
        self.resets = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        last = [time.monotonic()]

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                last[0] = time.monotonic()

        relay = asyncio.create_task(down())
        try:
            while data := await reader.read(65536):
                if time.monotonic() - last[0] > self.expiry_s:
                    self.resets += 1
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                up_writer.write(data)
                last[0] = time.monotonic()
        finally:
            relay.cancel()
            up_writer.close()
            with contextlib.suppress(Exception):
                writer.close()


def test_idle_pooled_connections_close_before_the_engine_closes_them(
    make_cluster, make_router, client, bg
) -> None:
    cluster = make_cluster("vllm", 1, 1)
    proxy = ExpiringProxy(cluster.decode[0].port, expiry_s=0.8)
    port = bg.run(proxy.start())
    try:
        router = make_router(
            cluster, decode=[f"http://127.0.0.1:{port}"], pool_idle_timeout_s=0.3, max_retries=0
        )
        for i in range(3):
            answer = client.post(
                router.url + "/v1/completions", json={"model": MODEL, "prompt": f"idle {i}", "max_tokens": 2}
            )
            assert answer.status_code == 200, answer.text  # one decode instance: a reset would be a 502
            time.sleep(1.0)  # longer than the engine's keep-alive, never reused by the router
        assert proxy.resets == 0
    finally:
        bg.run(proxy.stop())


def test_stalled_last_decode_instance_is_kept_and_requests_wait(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 1, 1)
    router = make_router(cluster, eject_after_failures=1, poll_interval_s=0.1)
    decode = router.state.registry.by_id["decode-0"]
    cluster.decode[0].faults.poll_delay_s = 1.5  # polls time out (1 s) for the whole stall
    wait_for(lambda: decode.poll_failures >= 2)
    assert decode.admitted
    answer = client.post(
        router.url + "/v1/completions", json={"model": MODEL, "prompt": "stall", "max_tokens": 2}
    )
    assert answer.status_code == 200
    cluster.decode[0].faults.poll_delay_s = 0.0
    wait_for(lambda: decode.poll_failures == 0)


def test_slow_polls_still_eject_when_another_instance_is_healthy(make_cluster, make_router) -> None:
    cluster = make_cluster("vllm", 1, 2)
    router = make_router(cluster, eject_after_failures=1, poll_interval_s=0.1)
    cluster.decode[0].faults.poll_delay_s = 1.5
    wait_for(lambda: not router.state.registry.by_id["decode-0"].admitted)
    assert router.state.registry.by_id["decode-1"].admitted


def test_503_carries_retry_after(make_cluster, make_router, client, bg) -> None:
    cluster = make_cluster("sglang", 1, 1)
    router = make_router(cluster, eject_after_failures=1)
    bg.run(cluster.decode[0].kill())  # gone, not slow: ejected
    wait_for(lambda: not router.state.registry.by_id["decode-0"].admitted)
    body = {"model": MODEL, "prompt": "anyone"}
    answer = client.post(router.url + "/v1/completions", json=body)
    assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1
    router.state.draining = True
    draining = client.post(router.url + "/v1/completions", json=body)
    assert draining.status_code == 503 and int(draining.headers["retry-after"]) >= 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_vllm_compatible_inputs_are_accepted(make_cluster, make_router, client, protocol) -> None:
    cluster = make_cluster(protocol, 1, 1)
    router = make_router(cluster)
    # Prompt scoring: max_tokens 0 with echo (lm-eval-harness and friends).
    scoring = {"model": MODEL, "prompt": "score me", "max_tokens": 0, "echo": True, "logprobs": 1}
    answer = client.post(router.url + "/v1/completions", json=scoring)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"] == "score me"
    assert answer.json()["usage"]["completion_tokens"] == 0
    if protocol == "vllm":  # prefill-only work: no KV handed to a decode instance
        assert cluster.decode[0].stats.completed == 0 and cluster.prefill[0].stats.completed == 1
    no_echo = client.post(router.url + "/v1/completions", json={**scoring, "echo": False})
    assert no_echo.status_code == 400 and "echo" in no_echo.json()["error"]["message"]
    # No model: the only one served, as vLLM does.
    oai = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    missing = client.post(router.url + "/v1/completions", json={"prompt": "which model", "max_tokens": 3})
    assert missing.status_code == 200 and missing.json()["model"] == MODEL
    assert missing.json()["choices"][0]["text"] == expected_text("which model", 3)
    # /v1/models as vLLM writes it.
    (card,) = oai.models.list().data
    raw = httpx.get(router.url + "/v1/models", trust_env=False).json()["data"][0]
    assert card.id == MODEL and raw["root"] == MODEL and raw["parent"] is None
    assert raw["max_model_len"] == 8192
    assert raw["permission"][0]["object"] == "model_permission" and raw["permission"][0]["allow_sampling"]


# --- QA report on issue 18, LOW: 503/429 answers a client can retry ---------------------------------------
def test_no_model_known_yet_is_503_with_retry_after(make_cluster, make_router, client, bg) -> None:
    cluster = make_cluster("vllm", 1, 1)
    for inst in cluster.instances:
        bg.run(inst.kill())  # engines down: no served model known
    router = make_router(cluster)
    for body in ({"prompt": "hi"}, {"model": MODEL, "prompt": "hi"}):
        answer = client.post(router.url + "/v1/completions", json=body)
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1


def test_engine_429_and_all_prefills_refusing_carry_retry_after(make_cluster, make_router, client) -> None:
    cluster = make_cluster("vllm", 2, 1)
    router = make_router(cluster, eject_after_failures=50)
    body = {"model": MODEL, "prompt": "busy?", "max_tokens": 2}
    cluster.decode[0].faults.error_status = 429
    limited = client.post(router.url + "/v1/completions", json=body)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-voltana-prompt-tokens"] == "1; source=estimate"
    cluster.decode[0].faults.error_status = None
    for inst in cluster.prefill:
        inst.faults.error_status = 503
    refused = client.post(router.url + "/v1/completions", json=body)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "prefill-0" in refused.text and "prefill-1" in refused.text


# --- QA report on issue 18, item 8: what vLLM's pydantic models accept ------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_integral_floats_and_empty_model_are_read_as_vllm_reads_them(
    make_cluster, make_router, client, protocol
) -> None:
    cluster = make_cluster(protocol, 1, 1)
    router = make_router(cluster)
    # n: 2.0 is n = 2 for pydantic's lax int: refused like n: 2, not let through as one sample.
    two = client.post(router.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "n": 2.0})
    assert two.status_code == 400 and two.json()["error"]["param"] == "n"
    body = {"model": "", "prompt": "lax ints", "max_tokens": 3.0, "n": 1.0}
    answer = client.post(router.url + "/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == MODEL and answer.json()["choices"][0]["text"] == expected_text(
        "lax ints", 3
    )
    half = client.post(router.url + "/v1/completions", json={**body, "max_tokens": 1.5})
    assert half.status_code == 400 and half.json()["error"]["param"] == "max_tokens"
