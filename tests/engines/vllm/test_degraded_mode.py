"""A broken voltana config or a missing GPU library never stops vLLM: one clear message, then monitor-only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.vllm_servers import VllmServer, running_vllm_servers
from voltana.adapters.iteration_trace import read_trace

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPT = "India energy aware serving of tiny models"


def _voltana_error_lines(server: VllmServer) -> list[str]:
    return [line for line in server.log_text().splitlines() if "ERROR" in line and "voltana" in line]


@pytest.fixture(scope="module")
def degraded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("vllm-degraded")
    trace = work / "no-gpu-trace.jsonl"
    broken_config = {"VOLTANA_ENABLED": "1", "VOLTANA_SLO__TTFT_S": "-1"}
    no_gpu_library = {
        "VOLTANA_ENABLED": "1",
        "VOLTANA_HARDWARE__VENDOR": "nvidia",  # no NVIDIA driver on this machine: NVML cannot load
        "VOLTANA_ENGINE__TRACE_PATH": str(trace),
    }
    specs = [("broken-config", broken_config, ()), ("no-gpu-library", no_gpu_library, ())]
    with running_vllm_servers(specs, tiny_model_dir, work / "logs") as servers:
        answers = {name: s.completion(PROMPT, max_tokens=4, ignore_eos=True) for name, s in servers.items()}
        yield {"servers": servers, "answers": answers, "trace": trace}


@pytest.mark.parametrize("name", ["broken-config", "no-gpu-library"])
def test_vllm_still_serves(degraded: dict[str, Any], name: str) -> None:
    answer = degraded["answers"][name]
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["choices"][0]["finish_reason"] == "length"


def test_broken_config_gives_one_clear_message(degraded: dict[str, Any]) -> None:
    errors = _voltana_error_lines(degraded["servers"]["broken-config"])
    assert len(errors) == 1, errors
    assert "invalid config: slo.ttft_s" in errors[0] and "monitor-only" in errors[0]
    assert "Traceback" not in degraded["servers"]["broken-config"].log_text()


def test_missing_gpu_library_gives_one_clear_message(degraded: dict[str, Any]) -> None:
    errors = _voltana_error_lines(degraded["servers"]["no-gpu-library"])
    assert len(errors) == 1, errors
    assert "GPU control unavailable" in errors[0] and "monitor-only" in errors[0]


@pytest.mark.parametrize("name", ["broken-config", "no-gpu-library"])
def test_metrics_say_monitor_only(degraded: dict[str, Any], name: str) -> None:
    text = degraded["servers"][name].metrics_text()
    assert 'voltana:monitor_only{engine="0"} 1.0' in text
    assert 'policy="monitor-only"' in text


def test_monitor_only_still_measures_every_iteration(degraded: dict[str, Any]) -> None:
    trace = read_trace(degraded["trace"])
    assert len(trace) == 4  # one prefill step, then three decode steps
    assert all(line["reason"] == "monitor-only" and line["latency_s"] > 0 for line in trace)
    assert all(line["energy_j"] is None for line in trace)  # no GPU to meter
