"""``benchmarks/bench_edge_routing.py`` as a user runs it: a point the simulator refuses stops the run before
anything is simulated, in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from voltana.core.types import Phase

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_edge_routing

    return bench_edge_routing


def run_main(bench: ModuleType, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["bench_edge_routing.py", *args])
    code: int = bench.main()
    return code


def one_point_table(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """The JSON table of one tiny point (LMSYS 5 req/s, seed 0, 2 s of arrivals)."""
    out = tmp_path / "edge.json"
    code = run_main(
        bench,
        ["--points", "llama-3.1-8b/lmsys@5", "--seeds", "0", "--duration", "2", "--json", str(out)],
        monkeypatch,
    )
    assert code == 0, capsys.readouterr().err
    (table,) = json.loads(out.read_text())["tables"]
    assert isinstance(table, dict)
    return table


def test_a_refused_later_point_stops_before_any_simulation(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_simulation(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated before every point's workload was built")

    monkeypatch.setattr(bench, "run_policy", no_simulation)
    points = "llama-3.1-8b/lmsys@100,llama-3.1-8b/lmsys@100000"
    with pytest.raises(SystemExit) as stopped:
        run_main(bench, ["--points", points, "--seeds", "0"], monkeypatch)
    captured = capsys.readouterr()
    assert stopped.value.code == 2
    assert captured.err == (
        "bench_edge_routing.py: error: 100000 req/s for 60 s is 6e+06 requests; at most 1,000,000 per run "
        "(each is generated up front and kept in memory): lower the rate or the duration\n"
    )
    assert captured.out == ""


def test_every_point_and_seed_is_a_row(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "edge.json"
    points = "llama-3.1-8b/lmsys@5,llama-3.1-8b/sharegpt@4"
    code = run_main(
        bench, ["--points", points, "--seeds", "0,1", "--duration", "2", "--json", str(out)], monkeypatch
    )
    assert code == 0, capsys.readouterr().err
    (table,) = json.loads(out.read_text())["tables"]
    assert [row[:2] for row in table["rows"]] == [
        ["llama-3.1-8b/lmsys 5", "0"],
        ["llama-3.1-8b/lmsys 5", "1"],
        ["llama-3.1-8b/sharegpt 4", "0"],
        ["llama-3.1-8b/sharegpt 4", "1"],
    ]


def test_each_phase_alone_keeps_ours_routes_and_pins_the_other_phase(bench: ModuleType) -> None:
    setup = bench.setup_for("llama-3.1-8b", "sglang", 0)
    static_max = bench.static_specs(setup)[0]
    ours = bench.parse_policy(bench.OURS)
    prefill_alone = bench.one_phase_ours(ours, static_max, "prefill")
    decode_alone = bench.one_phase_ours(ours, static_max, "decode")
    for spec in (prefill_alone, decode_alone):
        assert (spec.prefill_route, spec.decode_route) == (ours.prefill_route, ours.decode_route)
    pinned = ("static", {"static_clock_mhz": 1410})
    assert prefill_alone.clock_policy(Phase.PREFILL) == ours.clock_policy(Phase.PREFILL)
    assert prefill_alone.clock_policy(Phase.DECODE) == pinned
    assert decode_alone.clock_policy(Phase.DECODE) == ours.clock_policy(Phase.DECODE)
    assert decode_alone.clock_policy(Phase.PREFILL) == pinned


def test_the_phase_split_cells_hold_attainment_and_its_difference(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    table = one_point_table(bench, tmp_path, monkeypatch, capsys)
    columns = table["columns"]
    (row,) = table["rows"]
    same_routes = float(row[columns.index("1410 energy-ttft/ecoroute")].split("/")[1])
    for column in ("prefill clocks", "decode clocks"):
        cell = row[columns.index(column)]
        attainment, difference = cell.split(" ")
        itl = float(attainment.split("/")[1])
        assert float(difference.strip("()")) == pytest.approx(itl - same_routes, abs=0.11)


def test_off_a_terminal_no_blank_line_comes_before_the_table(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # rich ends a progress bar on a non-interactive console with a blank line; there is no bar there now.
    code = run_main(
        bench, ["--points", "llama-3.1-8b/lmsys@5", "--seeds", "0", "--duration", "2"], monkeypatch
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip(), "the table is printed"
    assert not captured.out.startswith("\n")
    assert captured.err == ""


def test_points_allow_spaces_and_run_once_each(bench: ModuleType) -> None:
    assert bench.parse_points(" llama-3.1-8b / lmsys @ 105 , llama-3.1-8b/lmsys@105.0") == [
        ("llama-3.1-8b", "lmsys", 105.0)
    ]
    assert bench.parse_seeds("1,0,1") == [1, 0]


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ("llama-3.1-8b/lmsys", "'llama-3.1-8b/lmsys' needs a rate, e.g. llama-3.1-8b/lmsys@105"),
        ("llama-3.1-8b/lmsys@", "'llama-3.1-8b/lmsys@' needs a rate, e.g. llama-3.1-8b/lmsys@105"),
        ("@70", "'@70' needs a panel, e.g. llama-3.1-8b/lmsys@105"),
        ("/ @70", "'/ @70' needs a panel, e.g. llama-3.1-8b/lmsys@105"),
        (
            "llama-3.1-8b/sharegpt@70,",
            "an empty item in 'llama-3.1-8b/sharegpt@70,'; give model/workload@rate,...",
        ),
        (
            "llama-3.1-8b/lmsys@105 req/s",
            "the rate '105 req/s' of 'llama-3.1-8b/lmsys@105 req/s' is not a number (req/s)",
        ),
    ],
)
def test_a_missing_or_bad_rate_says_which(bench: ModuleType, points: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        bench.parse_points(points)
    assert str(caught.value) == f"--points: {message}"


@pytest.mark.parametrize("path", ["out/", ""])
def test_json_that_names_no_file_is_refused_before_running(
    bench: ModuleType, path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_simulation(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated with a --json that names no file")

    monkeypatch.setattr(bench, "run_policy", no_simulation)
    with pytest.raises(SystemExit) as stopped:
        run_main(bench, ["--points", "llama-3.1-8b/lmsys@5", "--json", path], monkeypatch)
    assert stopped.value.code == 2
    assert f"argument --json: {path!r} is not a file path (give a file name)" in capsys.readouterr().err


def test_static_max_also_runs_on_four_times_the_arrivals(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs: list[tuple[str, float]] = []
    real_run = bench.run_policy

    def spy(setup: object, spec: object, workload: object, rate: float) -> object:
        runs.append((spec.name, float(workload.arrival_s[-1])))  # type: ignore[attr-defined]
        return real_run(setup, spec, workload, rate)

    monkeypatch.setattr(bench, "run_policy", spy)
    table = one_point_table(bench, tmp_path, monkeypatch, capsys)
    (row,) = table["rows"]
    assert table["columns"][-1] == "static max, 8 s"
    long_runs = [last_s for name, last_s in runs if last_s > 2.0]
    assert len(long_runs) == 1 and 6.0 < long_runs[0] <= 8.0  # one run, on the 8 s of arrivals
    assert [name for name, last_s in runs if last_s > 2.0] == ["static-max"]
    ttft, itl = (float(x) for x in row[-1].split("/"))
    assert 0.0 <= ttft <= 100.0 and 0.0 <= itl <= 100.0
