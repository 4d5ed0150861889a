"""``benchmarks/bench_sim_speed.py`` on Mooncake's own trace file (``--mooncake-trace``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from .test_bench_inputs import load, run_main

# Three lines as Mooncake's FAST'25 conversation trace has them (kvcache-ai/Mooncake, FAST25-release/traces).
MOONCAKE_LINES = (
    '{"timestamp": 0, "input_length": 6758, "output_length": 50, "hash_ids": [0, 1, 2]}\n'
    '{"timestamp": 3000, "input_length": 20506, "output_length": 29, "hash_ids": [0, 245]}\n'
    '{"timestamp": 5999, "input_length": 1053, "output_length": 26, "hash_ids": [0, 773, 774]}\n'
)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load("bench_sim_speed", monkeypatch)


def test_the_mooncake_trace_runs_as_its_own_workload(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "conversation_trace.jsonl"
    trace.write_text(MOONCAKE_LINES)
    out = tmp_path / "speed.json"
    args = ["--workload", "mooncake", "--mooncake-trace", str(trace), "--policies", "static-max"]
    code = run_main(bench, [*args, "--json", str(out)], monkeypatch)
    assert code in (0, 1), capsys.readouterr().err
    (table, *_) = json.loads(out.read_text())["tables"]
    (row,) = table["rows"]
    assert row[:3] == ["mooncake", "static-max", "3"]
    assert row[table["columns"].index("arrivals s")] == "6"  # the last arrival at 5,999 ms
    assert row[table["columns"].index("target")] == ">= 200x"
