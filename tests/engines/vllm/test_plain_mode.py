"""Plain (non-disaggregated) vLLM with voltana enabled vs disabled, on the real CPU engine.

The enabled server records every iteration voltana saw (``engine.trace_path``); the tests compare that
record with what vLLM itself reports (its per-step token histogram, token counters and response usage) and
compare the generated text with a server where voltana is disabled.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.vllm_servers import VllmServer, running_vllm_servers
from voltana.adapters.iteration_trace import read_trace
from voltana.core.state_payload import STATE_PAYLOAD_VERSION, InstanceStatePayload

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# Distinct first words (no shared prefix blocks, so no prefix-cache hits) and distinct lengths.
PROMPTS = tuple(
    f"{word} " + "energy aware serving of tiny models " * (i + 1)
    for i, word in enumerate(("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot"))
)
MAX_TOKENS = 8


def _samples(metrics_text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples named ``name`` from a Prometheus exposition, keyed by their sorted labels."""
    found = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _value(metrics_text: str, name: str, **labels: str) -> float:
    for key, value in _samples(metrics_text, name).items():
        if all((k, v) in key for k, v in labels.items()):
            return value
    raise AssertionError(f"{name} {labels} not in /metrics")


def _histogram_buckets(metrics_text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of one histogram by upper bound."""
    return {float(dict(key)["le"]): value for key, value in _samples(metrics_text, f"{name}_bucket").items()}


def _send_batch(server: VllmServer) -> list[dict[str, Any]]:
    """All prompts at once (one batch for the scheduler), greedy, fixed length."""
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(lambda p: server.completion(p, max_tokens=MAX_TOKENS, ignore_eos=True), PROMPTS))


@pytest.fixture(scope="module")
def plain_servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("vllm-plain")
    trace = work / "enabled-trace.jsonl"
    enabled_env = {
        "VOLTANA_ENABLED": "1",
        "VOLTANA_HARDWARE__VENDOR": "simulated",
        "VOLTANA_ENGINE__TRACE_PATH": str(trace),
    }
    specs = [("enabled", enabled_env, ()), ("disabled", {}, ())]
    with running_vllm_servers(specs, tiny_model_dir, work / "logs") as servers:
        enabled, disabled = servers["enabled"], servers["disabled"]
        before = enabled.metrics_text()
        enabled_results = _send_batch(enabled)
        disabled_results = _send_batch(disabled)
        yield {
            "enabled": enabled,
            "disabled": disabled,
            "trace": trace,
            "metrics_before": before,
            "metrics_after": enabled.metrics_text(),
            "enabled_results": enabled_results,
            "disabled_results": disabled_results,
        }


def test_outputs_identical_with_voltana_enabled_and_disabled(plain_servers: dict[str, Any]) -> None:
    enabled = [r["choices"][0]["text"] for r in plain_servers["enabled_results"]]
    disabled = [r["choices"][0]["text"] for r in plain_servers["disabled_results"]]
    assert all(r["usage"]["completion_tokens"] == MAX_TOKENS for r in plain_servers["enabled_results"])
    assert enabled == disabled


def test_one_decision_per_iteration_matching_vllm_step_histogram(plain_servers: dict[str, Any]) -> None:
    """vLLM's own per-step token histogram equals the one rebuilt from voltana's snapshots, step by step."""
    trace = read_trace(plain_servers["trace"])
    before, after = plain_servers["metrics_before"], plain_servers["metrics_after"]
    name = "vllm:iteration_tokens_total"
    vllm_steps = _value(after, f"{name}_count") - _value(before, f"{name}_count")
    assert len(trace) == vllm_steps > 0
    assert [line["iteration"] for line in trace] == list(range(len(trace)))  # once per iteration, in order
    assert all(line["policy"] == "ecofreq" and line["clock_mhz"] > 0 for line in trace)

    # vLLM counts, per step, computed prompt tokens + sampled tokens; a step that completes a prompt samples
    # that request's first token on top of its prompt tokens.
    prompt_len = {r["usage"]["prompt_tokens"] for r in plain_servers["enabled_results"]}
    per_step_tokens = []
    for line in trace:
        firsts = sum(1 for _, new, ctx in line["requests"] if new > 1 and ctx + new in prompt_len)
        per_step_tokens.append(line["num_new_tokens"] + firsts)
    buckets_before = _histogram_buckets(before, name)
    buckets_after = _histogram_buckets(after, name)
    for upper, count_after in buckets_after.items():
        observed = count_after - buckets_before.get(upper, 0.0)
        assert observed == sum(1 for t in per_step_tokens if t <= upper), f"bucket le={upper}"
    assert sum(per_step_tokens) == _value(after, f"{name}_sum") - _value(before, f"{name}_sum")


def test_snapshots_hold_new_and_continuing_requests_with_their_tokens(plain_servers: dict[str, Any]) -> None:
    trace = read_trace(plain_servers["trace"])
    usage_by_prompt_len = {r["usage"]["prompt_tokens"]: r["usage"] for r in plain_servers["enabled_results"]}
    steps: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for line in trace:
        assert line["batch_size"] == len(line["requests"])
        assert line["num_new_tokens"] == sum(new for _, new, _ in line["requests"])
        assert line["num_context_tokens"] == sum(ctx for _, _, ctx in line["requests"])
        for request_id, new, ctx in line["requests"]:
            steps[request_id].append((new, ctx))
    assert len(steps) == len(PROMPTS)
    for request_steps in steps.values():
        first_new, first_ctx = request_steps[0]
        assert first_ctx == 0  # new request, nothing cached: its whole prompt is computed at once
        usage = usage_by_prompt_len[first_new]
        # then one decode step per further token, each reading the KV of everything before it
        assert len(request_steps) == usage["completion_tokens"]
        assert request_steps[1:] == [(1, first_new + k) for k in range(usage["completion_tokens"] - 1)]
    prefill_tokens = sum(s[0][0] for s in steps.values())
    counter = "vllm:prompt_tokens_total"
    assert prefill_tokens == _value(plain_servers["metrics_after"], counter) - _value(
        plain_servers["metrics_before"], counter
    )


def test_mixed_instance_phase_follows_the_batch(plain_servers: dict[str, Any]) -> None:
    trace = read_trace(plain_servers["trace"])
    for line in trace:
        has_prompt_work = any(new > 1 or ctx == 0 for _, new, ctx in line["requests"])
        assert line["phase"] == ("prefill" if has_prompt_work else "decode")
    assert {line["phase"] for line in trace} == {"prefill", "decode"}


def test_instance_state_in_vllm_metrics(plain_servers: dict[str, Any]) -> None:
    text = plain_servers["enabled"].metrics_text()
    info = _samples(text, "voltana:instance_info")
    assert len(info) == 1
    labels = dict(next(iter(info)))
    assert labels["role"] == "mixed" and labels["policy"] == "ecofreq" and labels["engine"] == "0"
    assert _value(text, "voltana:monitor_only") == 0.0
    assert _value(text, "voltana:sm_clock_mhz") > 0
    assert _value(text, "voltana:kv_capacity_tokens") > 0
    assert _value(text, "voltana:iterations_total") == len(read_trace(plain_servers["trace"]))


def test_voltana_state_route_for_the_router(plain_servers: dict[str, Any]) -> None:
    state = httpx.get(plain_servers["enabled"].url + "/voltana/state", timeout=30.0).json()
    assert state["role"] == "mixed" and state["policy"] == "ecofreq" and state["monitor_only"] == 0
    assert isinstance(state["sm_clock_mhz"], int) and state["capture_sizes"] == []  # eager CPU: no graphs
    assert state["iterations"] == len(read_trace(plain_servers["trace"]))
    assert 0 < state["hook_time_per_iteration_s"] < 0.01
    assert [r["engine"] for r in state["replicas"]] == [0]
    assert InstanceStatePayload.from_json(state).version == STATE_PAYLOAD_VERSION  # the shared payload


def test_disabled_voltana_has_zero_effect(plain_servers: dict[str, Any]) -> None:
    disabled: VllmServer = plain_servers["disabled"]
    assert "voltana" not in disabled.log_text().lower()  # (checked before the request below is logged)
    assert "voltana" not in disabled.metrics_text()
    assert httpx.get(disabled.url + "/voltana/state", timeout=30.0).status_code == 404


def test_trace_lines_are_json_with_measurements(plain_servers: dict[str, Any]) -> None:
    lines = Path(plain_servers["trace"]).read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["latency_s"] > 0 and record["energy_j"] > 0  # simulated GPU: energy from the model
    assert record["applied_clock_mhz"] > 0


def test_request_energy_route_matches_escaped_ids_exactly(plain_servers: dict[str, Any]) -> None:
    """Last in this file (it adds requests). Real vLLM ids (``cmpl-<X-Request-Id>-0-<8 hex>``): each client
    id, escaped by the router's rule, finds its own record only; a prefix of it finds none ("not yet")."""
    import time

    from voltana.router.proxy import energy_url

    server = plain_servers["enabled"]
    ids = ["job7", "job7-retry", "a/b?c", "../../v1/models"]
    for request_id in ids:
        body = {"model": server.model, "prompt": "energy " + request_id, "max_tokens": 3 + len(request_id)}
        answer = httpx.post(f"{server.url}/v1/completions", json=body, headers={"x-request-id": request_id})
        assert answer.status_code == 200, answer.text
    for request_id in ids:
        url = str(energy_url(server.url, request_id))
        deadline = time.monotonic() + 10.0
        record = httpx.get(url, timeout=30.0)
        while record.status_code == 404 and time.monotonic() < deadline:
            assert record.json()["reason"] == "not_yet"
            time.sleep(0.1)
            record = httpx.get(url, timeout=30.0)
        assert record.status_code == 200, record.text
        assert record.json()["request_id"] == request_id and record.json()["energy_j"] > 0
    job7 = httpx.get(str(energy_url(server.url, "job7")), timeout=30.0).json()["energy_j"]
    both = job7 + httpx.get(str(energy_url(server.url, "job7-retry")), timeout=30.0).json()["energy_j"]
    assert job7 < both  # not the prefix sum
    missing = httpx.get(str(energy_url(server.url, "job")), timeout=30.0)
    assert missing.status_code == 404 and missing.json()["reason"] == "not_yet"
