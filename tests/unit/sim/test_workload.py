"""Workload files: Azure trace CSV, generic CSV, JSONL; rate scaling; one-line errors for bad files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voltana.sim.workload import WorkloadError, load_workload, parse_timestamp_s

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


def test_mooncake_traces_are_read_with_millisecond_timestamps(tmp_path: Path) -> None:
    # Lines shaped as Mooncake's FAST'25 conversation trace (kvcache-ai/Mooncake, FAST25-release/traces).
    path = write(
        tmp_path,
        "conversation_trace.jsonl",
        '{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2]}\n'
        '{"timestamp": 3000, "input_length": 87169, "output_length": 402, "hash_ids": [0, 245]}\n'
        '{"timestamp": 5999, "input_length": 1053, "output_length": 26, "hash_ids": [0, 773, 774]}\n',
    )
    workload = load_workload(path)
    assert workload.arrival_s.tolist() == pytest.approx([0.0, 3.0, 5.999])
    assert workload.input_tokens.tolist() == [6758, 87169, 1053]
    assert workload.output_tokens.tolist() == [500, 402, 26]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"timestamp": 0, "input_length": 5, "output_length": 2}\n{"arrival_s": 1, "input_tokens": 3}\n',
            "m.jsonl:2: missing timestamp, input_length, output_length (the file's first line is in "
            "Mooncake's format: every line needs timestamp, input_length, output_length)",
        ),
        (
            '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 2}\n{"timestamp": 1, "input_length": 3}\n',
            "m.jsonl:2: missing arrival_s, input_tokens, output_tokens (the file's first line is in the "
            "arrival_s/input_tokens/output_tokens format",
        ),
        (
            '{"timestamp": 1' + "0" * 400 + ', "input_length": 5, "output_length": 2}\n',
            "m.jsonl:1: bad timestamp 1000000000000000000000000000000000000... "
            "(a finite number of milliseconds)",
        ),
        (
            '{"arrival_s": 1' + "0" * 400 + ', "input_tokens": 5, "output_tokens": 2}\n',
            "m.jsonl:1: bad arrival_s 1000000000000000000000000000000000000... (a finite number of seconds)",
        ),
        (
            '{"timestamp": "0", "input_length": 5, "output_length": 2}\n',
            'm.jsonl:1: timestamp must be a number of milliseconds, got "0"',
        ),
        (
            '{"timestamp": 0, "input_length": 5.5, "output_length": 2}\n',
            "m.jsonl:1: input_length must be a JSON integer, got 5.5",
        ),
        ("[1]\n", "or Mooncake's timestamp, input_length, output_length"),
    ],
)
def test_a_bad_json_lines_line_is_one_line_naming_its_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(WorkloadError) as refused:
        load_workload(write(tmp_path, "m.jsonl", text))
    assert message in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("h.csv", "a,b,c\n1,2,3\n", "unknown CSV header"),
        (
            "trace.json",
            '{"timestamp": 0, "input_length": 5, "output_length": 2}\n',
            "trace.json: lines look like JSON, read as CSV by the file's extension; name a JSON Lines file",
        ),
        ("n.csv", "arrival_s,input_tokens,output_tokens\n0,abc,3\n", "is not a number"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "bad TIMESTAMP"),
        ("z.csv", "arrival_s,input_tokens,output_tokens\n0,0,3\n", "z.csv:2: input_tokens 0 must be >= 1"),
        ("e.csv", "arrival_s,input_tokens,output_tokens\n", "no requests"),
        ("j.jsonl", '{"arrival_s": 1}\n', "missing input_tokens, output_tokens"),
        ("l.jsonl", "[1, 2, 3]\n", "must be a JSON object"),
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


# Issue 18, item 6: timestamps as the public traces write them, read as UTC; token counts never rounded.

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-05-10 00:00:01.009930+00:00",  # Azure LLM inference trace 2024
        "2024-05-10T00:00:01.009930Z",
        "2024-05-10T00:00:01.0099300",
        "2024-05-10 02:00:01.00993+02:00",
        "2024-05-09T19:00:01.009930-0500",
        "2024-05-10 00:00:01.009930 UTC",
    ],
)
def test_iso_timestamps_with_offsets_mean_the_same_instant(timestamp: str) -> None:
    assert parse_timestamp_s(timestamp) == pytest.approx(1715299201.00993, abs=1e-6)


def test_azure_2024_trace_with_byte_order_mark(tmp_path: Path) -> None:
    """A spreadsheet export: BOM before the header, ``+00:00`` offsets, spaces around a header name."""
    path = tmp_path / "azure2024.csv"
    text = (
        "TIMESTAMP, ContextTokens ,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,4808,10\n"
        "2024-05-10 00:00:00.525930+00:00,3180,8\n"
        "2024-05-10T00:00:02Z,110,27\n"
    )
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    workload = load_workload(path)
    assert workload.arrival_s.tolist() == pytest.approx([0.0, 0.516, 1.99007])
    assert workload.input_tokens.tolist() == [4808, 3180, 110]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + b'{"arrival_s": 0.5, "input_tokens": 3, "output_tokens": 4}\n')
    assert load_workload(jsonl).input_tokens.tolist() == [3]


def test_unknown_header_shows_invisible_characters(tmp_path: Path) -> None:
    path = write(
        tmp_path, "zw.csv", "TIMESTAMP\u200b,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,1,1\n"
    )
    with pytest.raises(WorkloadError, match=r"unknown CSV header TIMESTAMP\\u200b,"):
        load_workload(path)


@pytest.fixture
def new_york_time() -> Iterator[None]:
    """The process in New York's time zone (daylight saving from 2024-03-10 02:00 local)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        assert time.localtime(1710054000).tm_isdst == 1  # 2024-03-10 03:00 EDT: the zone is really in effect
        yield
    time.tzset()


@pytest.mark.usefixtures("new_york_time")
def test_naive_timestamps_are_utc_across_a_dst_change(tmp_path: Path) -> None:
    """Two arrivals an hour and a second apart by the clock; read in local time they would be 1 s apart."""
    path = write(
        tmp_path,
        "dst.csv",
        AZURE_HEADER + "2024-03-10 01:59:59.5000000,100,10\n2024-03-10 03:00:00.5000000,100,10\n",
    )
    assert load_workload(path).arrival_s.tolist() == pytest.approx([0.0, 3601.0])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "f.jsonl",
            '{"arrival_s": 0, "input_tokens": 10, "output_tokens": 5}\n'
            '{"arrival_s": 1, "input_tokens": 12.7, "output_tokens": 5}\n',
            "f.jsonl:2: input_tokens must be a JSON integer, got 12.7",
        ),
        (
            "s.jsonl",
            '\n{"arrival_s": 0, "input_tokens": 10, "output_tokens": "5"}\n',
            's.jsonl:2: output_tokens must be a JSON integer, got "5"',
        ),
        (
            "w.jsonl",
            '{"arrival_s": 0, "input_tokens": 10.0, "output_tokens": 5}\n',
            "w.jsonl:1: input_tokens must be a JSON integer, got 10.0",
        ),
        (
            "b.jsonl",
            '{"arrival_s": 0, "input_tokens": true, "output_tokens": 5}\n',
            "b.jsonl:1: input_tokens must be a JSON integer, got true",
        ),
        (
            "a.jsonl",
            '{"arrival_s": "0.5", "input_tokens": 1, "output_tokens": 5}\n',
            'a.jsonl:1: arrival_s must be a number of seconds, got "0.5"',
        ),
        (
            "c.csv",
            "arrival_s,input_tokens,output_tokens\n0,10,5\n1,10,2.5\n",
            "c.csv:3: output_tokens '2.5' is not a whole number",
        ),
    ],
)
def test_token_counts_that_are_not_integers_name_the_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(WorkloadError, match=message):
        load_workload(write(tmp_path, name, text))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "big.csv",
            "arrival_s,input_tokens,output_tokens\n0,10,5\n1,99999999999999999999999,5\n",
            r"big.csv:3: input_tokens 99999999999999999999999 is too large \(at most 2147483647 tokens\)",
        ),
        (
            "big.jsonl",
            '{"arrival_s": 0, "input_tokens": 10, "output_tokens": 99999999999999999999999}\n',
            r"big.jsonl:1: output_tokens 99999999999999999999999 is too large",
        ),
        (
            "big_azure.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,9223372036854775808,5\n",
            r"big_azure.csv:2: ContextTokens 9223372036854775808 is too large",
        ),
    ],
)
def test_token_counts_beyond_the_limit_name_the_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    """Issue 18 follow-up: a count too large for int64 was an OverflowError traceback in from_columns."""
    with pytest.raises(WorkloadError, match=message) as info:
        load_workload(write(tmp_path, name, text))
    assert "\n" not in str(info.value)


def test_from_columns_rejects_counts_beyond_the_limit() -> None:
    from voltana.sim.workload import MAX_TOKENS, from_columns

    with pytest.raises(WorkloadError, match="at most 2147483647"):
        from_columns("w", [0.0], [MAX_TOKENS + 1], [1])
    assert len(from_columns("w", [0.0], [MAX_TOKENS], [1])) == 1
