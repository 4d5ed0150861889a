"""Prefill/decode disaggregation on CPU: two ``vllm serve`` instances sharing KV through ExampleConnector.

Each instance runs voltana in its phase role (``VOLTANA_ENGINE__ROLE``; ExampleConnector, like NixlConnector,
uses ``kv_role=kv_both``, so the role cannot come from vLLM's config). Both get the same SLOs: a TTFT bound
that any clock meets and an ITL bound that no clock meets. The prefill instance's decisions are then all
feasible (TTFT path) while every decode decision is infeasible at the max clock (ITL path): the role alone
selects the path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.vllm_servers import running_pd_pair
from voltana.adapters.iteration_trace import read_trace

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# Long enough to span several KV blocks, so the decode instance can load most of the prompt.
PROMPTS = tuple(
    f"{word} "
    + "GPU clocks trade latency for power: lower clocks save energy when the deadline allows. " * 12
    for word in ("Golf", "Hotel")
)
SLO_ENV = {"VOLTANA_SLO__TTFT_S": "1000", "VOLTANA_SLO__ITL_S": "0.000001"}


def _voltana_env(role: str, trace: Path) -> dict[str, str]:
    return {
        "VOLTANA_ENABLED": "1",
        "VOLTANA_ENGINE__ROLE": role,
        "VOLTANA_HARDWARE__VENDOR": "simulated",
        "VOLTANA_ENGINE__TRACE_PATH": str(trace),
        **SLO_ENV,
    }


@pytest.fixture(scope="module")
def pd_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("vllm-pd")
    traces = {"prefill": work / "prefill-trace.jsonl", "decode": work / "decode-trace.jsonl"}
    with running_pd_pair(
        tiny_model_dir,
        work / "logs",
        work / "kv-store",
        prefill_env=_voltana_env("prefill", traces["prefill"]),
        decode_env=_voltana_env("decode", traces["decode"]),
    ) as (prefill, decode):
        results = []
        for prompt in PROMPTS:  # the router's flow: prefill with max_tokens=1, then decode the same prompt
            first = prefill.completion(prompt, max_tokens=1)
            full = decode.completion(prompt, max_tokens=8, ignore_eos=True)
            results.append((first, full))
        yield {
            "prefill": prefill,
            "decode": decode,
            "results": results,
            "prefill_trace": read_trace(traces["prefill"]),
            "decode_trace": read_trace(traces["decode"]),
            "prefill_metrics": prefill.metrics_text(),
            "decode_metrics": decode.metrics_text(),
        }


def test_both_instances_serve_over_the_openai_api(pd_run: dict[str, Any]) -> None:
    for first, full in pd_run["results"]:
        assert first["usage"]["completion_tokens"] == 1
        assert full["usage"]["completion_tokens"] == 8
        assert first["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"]
        # greedy: the decode instance's first token is the one the prefill instance produced
        assert full["choices"][0]["text"].startswith(first["choices"][0]["text"])


def test_decode_instance_loads_the_prefilled_kv(pd_run: dict[str, Any]) -> None:
    assert pd_run["decode"].log_text().count("External Cache Hit!") >= len(PROMPTS)
    prompt_lengths = {first["usage"]["prompt_tokens"] for first, _ in pd_run["results"]}
    first_steps = {}
    for line in pd_run["decode_trace"]:
        for request_id, new, ctx in line["requests"]:
            first_steps.setdefault(request_id, (new, ctx))
    assert len(first_steps) == len(PROMPTS)
    for new, ctx in first_steps.values():
        assert ctx + new in prompt_lengths
        assert ctx > new  # most of the prompt came from the prefill instance, not recomputed


def test_prefill_instance_takes_the_ttft_path(pd_run: dict[str, Any]) -> None:
    trace = pd_run["prefill_trace"]
    assert trace and all(line["phase"] == "prefill" for line in trace)
    assert all(line["policy"] == "ecofreq" for line in trace)
    assert all(line["reason"] not in ("infeasible", "monitor-only") for line in trace)
    assert any(line["reason"] != "predictor-untrusted" for line in trace)  # decided on predictions


def test_decode_instance_takes_the_itl_path(pd_run: dict[str, Any]) -> None:
    trace = pd_run["decode_trace"]
    assert trace and all(line["phase"] == "decode" for line in trace)
    decode_steps = [line for line in trace if all(new == 1 for _, new, _ in line["requests"])]
    assert decode_steps
    assert all(line["reason"] in ("infeasible", "predictor-untrusted") for line in decode_steps)
    assert any(line["reason"] == "infeasible" for line in decode_steps)  # predicted ITL misses 1 µs
    assert len({line["clock_mhz"] for line in decode_steps}) == 1  # the max clock, every time


def test_roles_in_metrics(pd_run: dict[str, Any]) -> None:
    assert 'role="prefill"' in pd_run["prefill_metrics"]
    assert 'role="decode"' in pd_run["decode_metrics"]
