"""``benchmarks/bench_sim_speed.py`` on Mooncake's own trace file (``--mooncake-trace``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
# Three lines as Mooncake's FAST'25 conversation trace has them (kvcache-ai/Mooncake, FAST25-release/traces).
MOONCAKE_LINES = (
    '{"timestamp": 0, "input_length": 6758, "output_length": 50, "hash_ids": [0, 1, 2]}\n'
    '{"timestamp": 3000, "input_length": 20506, "output_length": 29, "hash_ids": [0, 245]}\n'
    '{"timestamp": 5999, "input_length": 1053, "output_length": 26, "hash_ids": [0, 773, 774]}\n'
)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_sim_speed

    return bench_sim_speed


def run_main(bench: ModuleType, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["bench_sim_speed.py", *args])
    code: int = bench.main()
    return code


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "mooncake"], "--workload mooncake needs --mooncake-trace PATH"),
        (["--mooncake-trace", "missing.jsonl"], "--mooncake-trace: workload file not found: missing.jsonl"),
    ],
)
def test_a_missing_mooncake_trace_is_one_line_before_any_run(
    bench: ModuleType,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated before the trace was read")

    monkeypatch.setattr(bench, "run_policy", no_run)
    with pytest.raises(SystemExit) as stopped:
        run_main(bench, args, monkeypatch)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("bench_sim_speed.py: error: ") and message in err and err.count("\n") == 1
