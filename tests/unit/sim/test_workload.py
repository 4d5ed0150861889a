"""Workload files: Azure trace CSV, generic CSV, JSONL; rate scaling; one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voltana.sim.workload import WorkloadError, load_workload

TRACE = Path(__file__).resolve().parents[2] / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_format_with_seven_fraction_digits(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "azure.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:46.1805900,10,2\n",
    )
    workload = load_workload(path)
    assert len(workload) == 3
    assert workload.arrival_s.tolist() == pytest.approx([0.0, 0.5, 4.8145790])
    assert workload.input_tokens.tolist() == [10, 374, 396]  # sorted by arrival
    assert workload.output_tokens.tolist() == [2, 44, 109]


def test_generic_csv_and_jsonl_agree(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "w.csv", "arrival_s,input_tokens,output_tokens\n1.5,100,20\n2.0,50,5\n")
    jsonl_path = write(
        tmp_path,
        "w.jsonl",
        '{"arrival_s": 1.5, "input_tokens": 100, "output_tokens": 20}\n\n'
        '{"arrival_s": 2.0, "input_tokens": 50, "output_tokens": 5}\n',
    )
    a, b = load_workload(csv_path), load_workload(jsonl_path)
    assert a.arrival_s.tolist() == b.arrival_s.tolist() == [0.0, 0.5]
    assert a.input_tokens.tolist() == b.input_tokens.tolist() == [100, 50]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("h.csv", "a,b,c\n1,2,3\n", "unknown CSV header"),
        ("n.csv", "arrival_s,input_tokens,output_tokens\n0,abc,3\n", "is not a number"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "bad TIMESTAMP"),
        ("z.csv", "arrival_s,input_tokens,output_tokens\n0,0,3\n", "token counts must be >= 1"),
        ("e.csv", "arrival_s,input_tokens,output_tokens\n", "no requests"),
        ("j.jsonl", '{"arrival_s": 1}\n', "needs numeric"),
        ("g.jsonl", "not json\n", "not valid JSON"),
    ],
)
def test_bad_files_raise_one_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message) as info:
        load_workload(write(tmp_path, name, text))
    assert "\n" not in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="not found"):
        load_workload(tmp_path / "absent.csv")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(WorkloadError):
        load_workload(binary)


def test_rate_scaling_and_truncation(tmp_path: Path) -> None:
    path = write(tmp_path, "w.csv", "arrival_s,input_tokens,output_tokens\n0,1,1\n1,1,1\n2,1,1\n4,1,1\n")
    workload = load_workload(path)
    assert workload.rate_rps == pytest.approx(0.75)
    doubled = workload.scaled(2.0)
    assert doubled.arrival_s.tolist() == [0.0, 0.5, 1.0, 2.0]
    assert workload.at_rate(3.0).rate_rps == pytest.approx(3.0)
    assert len(workload.truncated(1.5)) == 2
    with pytest.raises(WorkloadError):
        workload.scaled(0.0)


def test_real_azure_trace_loads() -> None:
    workload = load_workload(TRACE)
    assert len(workload) == 19366
    assert workload.duration_s == pytest.approx(3501.7, abs=0.5)
    assert np.all(np.diff(workload.arrival_s) >= 0)
