"""``benchmarks/bench_edge_draws.py``: the grid's two checks read on the means of several arrival draws."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from voltana.sim.frontier import FrontierPoint

from .test_bench_inputs import load, run_main


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load("bench_edge_draws", monkeypatch)


def attainment(ttft: float, itl: float) -> SimpleNamespace:
    return SimpleNamespace(ttft_attainment=ttft, itl_attainment=itl)


def draw(
    bench: ModuleType,
    static_itl: float,
    ours_itl: float,
    ours: list[FrontierPoint],
    paper: list[FrontierPoint],
) -> Any:
    """A stand-in for one draw's RatePoint: only what the checks read."""
    return SimpleNamespace(
        static_max=attainment(1.0, static_itl),
        ours=attainment(1.0, ours_itl),
        frontiers={bench.OURS: ours, bench.PAPER: paper},
    )


def at(policy: str, margin: float, saving: float, itl: float) -> FrontierPoint:
    return FrontierPoint(policy, margin, saving, itl, 1.0, itl, 1.0 - saving)


def test_a_draw_that_misses_alone_does_not_fail_the_mean_check(bench: ModuleType) -> None:
    # Ours loses 1 point on one draw and gains 0.6 on another: the one-draw check fails once, the means hold.
    ours, paper = [at(bench.OURS, 0.1, 0.3, 1.0)], [at(bench.PAPER, 0.1, 0.3, 1.0)]
    draws = [draw(bench, 0.97, 0.96, ours, paper), draw(bench, 0.95, 0.956, ours, paper)]
    check = bench.attainment_check(draws)
    assert check.single_draws_pass == 1
    assert check.itl_diff[0] == pytest.approx(-0.2)
    assert check.holds
    assert check.static_max_itl == pytest.approx(96.0) and check.carried_draws == 2
    worse = bench.attainment_check([draw(bench, 0.97, 0.96, ours, paper)] * 2)
    assert not worse.holds and worse.single_draws_pass == 0


def test_the_saving_check_compares_best_margins_of_the_mean_frontiers(bench: ModuleType) -> None:
    # The paper's margin 0.1 keeps the SLO on draw 0 only (it wins that draw's one-draw check); on the means
    # only its margin 0.3 reaches the floor, and ours' margin 0.1 saves more than that.
    ours = [at(bench.OURS, 0.1, 0.28, 0.999), at(bench.OURS, 0.3, 0.23, 1.0)]
    paper_0 = [at(bench.PAPER, 0.1, 0.326, 0.998), at(bench.PAPER, 0.3, 0.25, 1.0)]
    paper_1 = [at(bench.PAPER, 0.1, 0.33, 0.88), at(bench.PAPER, 0.3, 0.22, 1.0)]
    check = bench.saving_check(
        [draw(bench, 1.0, 0.999, ours, paper_0), draw(bench, 1.0, 0.999, ours, paper_1)]
    )
    assert check.itl_floor == pytest.approx(99.5)
    assert (check.ours.margin, check.paper.margin) == (0.1, 0.3)
    assert check.paper.saving == pytest.approx(0.235)
    assert check.saving_diff[0] == pytest.approx(100 * (0.28 - 0.235))
    assert check.single_draws_pass == 1 and check.holds
    never = bench.saving_check([draw(bench, 1.0, 0.9, [at(bench.OURS, 0.1, 0.3, 0.9)], paper_0)])
    assert never.ours is None and not never.holds and never.saving_diff is None


def test_each_draw_is_the_grid_point_at_that_seed_in_one_process_or_two(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / f"draws{jobs}.json"
        args = ["--points", "llama-3.1-8b/lmsys@5", "--draws", "2", "--duration", "2", "--jobs", jobs]
        code = run_main(bench, [*args, "--json", str(out)], monkeypatch)
        assert code in (0, 1), capsys.readouterr().err
        payload = json.loads(out.read_text())
        tables.append(payload["tables"])
    assert tables[0] == tables[1]
    (seeds,) = payload["details"]["draws"].values()
    assert [d["seed"] for d in seeds] == [0, 1]
    grid_point = bench.simulate_point(bench.PANELS[1], 5.0, "sglang", 1, 2.0, bench.DEFAULT_MARGINS, None)
    assert seeds[1]["ours"]["itl"] == grid_point.ours.itl_attainment
    assert seeds[1]["frontiers"][bench.PAPER] == [vars(f) for f in grid_point.frontiers[bench.PAPER]]
    att_table, save_table = tables[0]
    assert [row[0] for row in att_table["rows"]] == ["llama-3.1-8b/lmsys 5"]
    assert att_table["rows"][0][-3:-1] == ["2/2", "2/2"]
    assert save_table["columns"][-1] == "check" and save_table["rows"][0][0] == "llama-3.1-8b/lmsys 5"


def test_crossed_specs_swap_the_routes_and_turn_the_load_rule_off(bench: ModuleType) -> None:
    ours, paper = bench.parse_policy(bench.OURS), bench.parse_policy(bench.PAPER)
    specs = bench.crossed_specs()
    paper_clocks, _ = specs["paper clocks, ours' routes"]
    ours_clocks, _ = specs["ours' clocks, paper routes"]
    no_load_rule, options = specs["ours, no decode load rule"]
    assert (paper_clocks.decode_clock, paper_clocks.prefill_route, paper_clocks.decode_route) == (
        paper.decode_clock,
        ours.prefill_route,
        ours.decode_route,
    )
    assert (ours_clocks.decode_clock, ours_clocks.prefill_route, ours_clocks.decode_route) == (
        ours.decode_clock,
        paper.prefill_route,
        paper.decode_route,
    )
    assert no_load_rule == ours and options == {"decode_window_s": 0.0}


def test_the_crossed_table_averages_each_run_over_the_draws(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "crossed.json"
    args = ["--points", "llama-3.1-8b/lmsys@5", "--draws", "2", "--duration", "2", "--crossed"]
    code = run_main(bench, [*args, "--json", str(out)], monkeypatch)
    assert code in (0, 1), capsys.readouterr().err
    payload = json.loads(out.read_text())
    *_, crossed = payload["tables"]
    assert crossed["columns"][2:] == [bench.PAPER, bench.OURS, *bench.crossed_specs()]
    (row,) = crossed["rows"]
    draws = payload["details"]["draws"]["llama-3.1-8b/lmsys@5"]
    for column, name in enumerate(bench.crossed_specs(), start=4):
        saving = sum(100 * d["crossed"][name]["saving"] for d in draws) / 2
        itl = sum(100 * d["crossed"][name]["itl_attainment"] for d in draws) / 2
        assert row[column] == f"{saving:.1f} / {itl:.1f}"
    without = run_main(bench, [*args[:-1], "--json", str(tmp_path / "plain.json")], monkeypatch)
    assert without in (0, 1)
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert len(plain["tables"]) == 2 and plain["details"]["draws"]["llama-3.1-8b/lmsys@5"][0]["crossed"] == {}
