"""``voltana simulate`` engine options: the decode limits shown, over-context requests refused and counted."""

from __future__ import annotations

import json
from pathlib import Path

from .test_simulate_cli import run_cli


def _trace(tmp_path: Path) -> Path:
    trace = tmp_path / "t.csv"
    rows = "".join(f"{i * 0.3},{200 + 10 * i},{20 + i}\n" for i in range(20))
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows + "6.1,5000,10\n")  # last: 5010 tokens
    return trace


def test_over_context_request_is_refused_and_counted(tmp_path: Path) -> None:
    args = ("--workload", str(_trace(tmp_path)), "--policies", "static-max", "--max-model-len", "4096")
    table = run_cli(*args, "--engine", "sglang", "--max-running", "64")
    assert table.returncode == 0, table.stderr
    assert "decode engine sglang: at most 64 running requests, max_model_len 4096" in table.stdout
    assert "refused by the engine (HTTP 400, not simulated): 1 longer than max_model_len" in table.stdout
    assert "adm. wait" in table.stdout
    data = json.loads(run_cli(*args, "--json").stdout)
    assert data["engine"]["name"] == "vllm" and data["engine"]["max_running"] == 256  # A100 default
    result = data["points"][0]["results"][0]
    assert (result["num_requests"], result["rejected_over_context"]) == (20, 1)
    assert set(result["admission_wait"]) == {"p50_s", "p90_s", "p99_s"}


def test_bad_engine_settings_are_one_line(tmp_path: Path) -> None:
    trace = str(_trace(tmp_path))
    for extra, words in (
        (("--engine", "tgi"), "unknown engine 'tgi'; known: vllm, sglang"),
        (("--max-running", "0"), "max running requests must be at least 1"),
    ):
        result = run_cli("--workload", trace, "--policies", "static-max", *extra)
        assert result.returncode == 2
        assert words in result.stderr and "Traceback" not in result.stderr
