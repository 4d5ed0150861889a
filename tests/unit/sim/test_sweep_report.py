"""Sweeps as the tables and JSON report them: overloaded rates (issue 18, item 9)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from voltana.core.types import Slo
from voltana.hardware.simulated import PerformanceModel
from voltana.sim.metrics import LatencySummary, PolicyResult
from voltana.sim.rates import rate_digits, rate_text
from voltana.sim.report import (
    comparison_markdown,
    finite_json,
    json_text,
    named_rate,
    point_title,
    policy_table,
    residency_table,
    sweep_json,
    unchecked_overload_line,
)
from voltana.sim.runner import SimulationError, SimulationSetup
from voltana.sim.sweep import OVERLOAD_ATTAINMENT, SweepPoint, run_sweep
from voltana.sim.synthetic import synthetic_workload
from voltana.sim.workload import Workload

from .conftest import make_setup


def render(table: object) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def result(policy: str, **changes: Any) -> PolicyResult:
    """A hand-made table row (no simulation): 100 requests at 1 req/s, every one meeting the SLO."""
    latency = LatencySummary(0.01, 0.02, 0.03)
    row: dict[str, Any] = {
        "policy": policy, "rate_rps": 1.0, "num_requests": 100, "output_tokens": 1000, "span_s": 100.0,
        "energy_j": 1e4, "prefill_energy_j": 4e3, "decode_energy_j": 6e3, "joules_per_token": 10.0,
        "ttft": latency, "itl": latency, "slo_attainment": 1.0, "ttft_attainment": 1.0, "itl_attainment": 1.0,
        "clock_residency": {}, "iterations": 10,
    }  # fmt: skip
    return PolicyResult(**{**row, **changes})


@pytest.fixture(scope="module")
def one_pair(a100_llama: PerformanceModel) -> SimulationSetup:
    return make_setup(a100_llama, num_prefill=1, num_decode=1)


def test_overloaded_rate_is_flagged_and_prints_no_savings(one_pair: SimulationSetup) -> None:
    """1P+1D at 30 req/s: static max finishes a fraction of the requests in time; at 2 req/s it does not."""

    def workload_at(rate: float) -> Workload:
        return synthetic_workload(rate, 10.0, seed=0)

    calm, busy = run_sweep(one_pair, ["static-max", "static-min"], workload_at, [2.0, 30.0])
    assert calm.overload is None
    assert "n/a" not in render(policy_table(calm, one_pair.slo))
    overload = busy.overload
    assert overload is not None
    base = busy.results[0]
    assert base.policy == "static-max" and base.slo_attainment < OVERLOAD_ATTAINMENT
    assert overload.slo_attainment == base.slo_attainment
    assert overload.ttft_p50_over_slo == pytest.approx(base.ttft.p50_s / one_pair.slo.ttft_s)
    # Requests arrive faster than static max completes them: that is by how much the cluster is short.
    assert overload.offered_rps is not None and overload.completed_rps < overload.offered_rps
    line = overload.describe()
    assert line.startswith(f"overloaded: static-max meets the SLO for only {base.slo_attainment:.1%}")
    assert "median TTFT" in line and "savings not meaningful" in line and "\n" not in line
    text = render(policy_table(busy, one_pair.slo))
    assert text.count("n/a (overload)") == 2 and "+" not in text.split("static-min")[1].split("\n")[0]
    markdown = comparison_markdown([calm, busy]).splitlines()
    assert "n/a (overload) / " in markdown[-1] and "%" in markdown[-2] and "n/a" not in markdown[-2]
    data = sweep_json([calm, busy], {})
    assert data["points"][0]["overload"] is None
    assert data["points"][1]["overload"]["slo_attainment"] == base.slo_attainment


def test_the_residency_headers_say_only_the_top_three_clocks_show() -> None:
    shares = {1005: 0.4, 1065: 0.3, 1125: 0.2, 1410: 0.1}
    point = SweepPoint(5.0, (result("ecofreq", clock_residency={"prefill": shares, "decode": shares}),))
    text = render(residency_table(point))
    assert text.count("top 3 clocks") == 2
    assert "1005:40% 1065:30% 1125:20%" in text and "1410" not in text


@pytest.mark.parametrize(
    ("rate_rps", "text"),
    [
        (3.40119, "3.4"),
        (5.53, "5.53"),
        (25.0, "25"),
        (12.5, "12.5"),
        (0.5, "0.5"),
        (130.4, "130"),
        (0.00001234, "0.0000123"),  # was 1.23e-05
        (123456.7, "123457"),  # was 1.23e+05 in the overload line
    ],
)
def test_rates_print_with_three_significant_digits(rate_rps: float, text: str) -> None:
    assert rate_text(rate_rps) == text


def test_a_trace_at_its_own_rate_prints_its_rate_rounded_everywhere() -> None:
    """Without ``--rate`` a trace runs at its own mean rate, a float such as 3.40119 req/s."""
    point = SweepPoint(3.40119, (result("static-max"),), "trace.csv (x1)", 35, 10.0)
    title = point_title(point)
    assert title == "3.4 req/s: 35 requests in 10 s of arrivals (trace.csv; sweep rate 3.4 req/s)"
    tables = render(policy_table(point, Slo(0.8, 0.05))) + render(residency_table(point))
    assert tables.count("3.4 req/s") == 2  # both titles
    assert comparison_markdown([point]).splitlines()[-1].startswith("| 3.4 |")
    assert "3.40119" not in title + tables + comparison_markdown([point])


def test_the_rates_of_one_sweep_print_distinctly() -> None:
    """``--rates 3.331,3.334`` printed two tables both titled ``sweep rate 3.33 req/s``."""
    rates = (3.331, 3.334, 5.0)
    assert [rate_text(r, rates) for r in rates] == ["3.331", "3.334", "5"]
    assert rate_digits(rates) == 4 and rate_digits([3.4, 5.53]) == 3 and rate_digits([]) == 3
    assert [rate_text(r, (130.4, 130.2)) for r in (130.4, 130.2)] == ["130.4", "130.2"]
    assert rate_text(3.40119, [3.40119]) == "3.4"  # a rate is not told apart from itself
    points = [SweepPoint(r, (result("static-max"),), "synthetic", 35, 10.0) for r in rates[:2]]
    titles = [point_title(p, rates) for p in points]
    assert "sweep rate 3.331 req/s" in titles[0] and "sweep rate 3.334 req/s" in titles[1]
    tables = [render(policy_table(p, Slo(0.8, 0.05), "", rates)) + render(residency_table(p, rates))
              for p in points]  # fmt: skip
    assert tables[0].count("3.331 req/s") == 2 and tables[1].count("3.334 req/s") == 2
    rows = comparison_markdown(points).splitlines()[-2:]
    assert rows[0].startswith("| 3.331 |") and rows[1].startswith("| 3.334 |")


def test_a_rate_as_printed_names_the_simulated_rate() -> None:
    """``--timeline-rate`` took only the exact float: a trace at its own mean rate (3.40119 req/s, printed
    3.4) could not practically be named."""
    assert named_rate(3.4, [3.40119]) == 3.40119
    assert named_rate(3.401, [2.0, 3.40119]) == 3.40119
    assert named_rate(3.33, [10 / 3, 5.0]) == 10 / 3
    assert named_rate(2.0, [2.0, 4.0]) == 2.0
    assert named_rate(3.34, [3.331, 3.334, 3.3412]) == 3.3412  # printed 3.341, but alone at 3 digits
    assert named_rate(130, [130.4, 200.0]) == 130.4
    with pytest.raises(SimulationError) as several:
        named_rate(3.33, [3.331, 3.334])
    assert str(several.value) == (
        "--timeline-rate 3.33 matches several simulated rates (3.331, 3.334 req/s): give one as printed"
    )
    with pytest.raises(SimulationError) as none:
        named_rate(3.0, [10 / 3, 4.0])
    assert str(none.value) == "--timeline-rate 3 is not one of the simulated rates (3.33, 4 req/s)"


def test_no_itl_is_null_in_json_and_a_dash_in_the_table() -> None:
    """Requests with one output token each have no ITL (NaN percentiles): ``--json`` printed ``NaN``, which
    strict JSON parsers refuse, and the table ``nan/nan/nan``."""
    nan = float("nan")
    point = SweepPoint(1.0, (result("static-max", itl=LatencySummary(nan, nan, nan)),), "one.csv", 100, 99.0)
    data = json.loads(json_text(sweep_json([point], {"inf": math.inf})), parse_constant=_refuse)
    assert data["points"][0]["results"][0]["itl"] == {"p50_s": None, "p90_s": None, "p99_s": None}
    assert data["inf"] is None
    assert finite_json({"a": (1.0, -math.inf), "b": [nan, 2, "x"]}) == {"a": [1.0, None], "b": [None, 2, "x"]}
    table = render(policy_table(point, Slo(0.8, 0.05)))
    assert "nan" not in table and "-/-/-" in table


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in JSON output")


def test_without_static_max_a_rate_every_policy_misses_gets_a_hint() -> None:
    """The overload check needs static max; without it, low attainment everywhere says only "may be"."""
    missed = (result("static-min", slo_attainment=0.034), result("ecofreq+ecoroute", slo_attainment=0.057))
    line = unchecked_overload_line(SweepPoint(30.0, missed))
    assert line == (
        "every policy meets the SLO for under 50% of requests (best: ecofreq+ecoroute, 5.7%): the cluster "
        "may be overloaded; add static-max to --policies to check"
    )
    # One policy serves most requests: no hint. Static max ran: the overload check speaks instead.
    assert unchecked_overload_line(SweepPoint(30.0, (*missed, result("ecofreq", slo_attainment=0.6)))) == ""
    assert (
        unchecked_overload_line(SweepPoint(30.0, (result("static-max", slo_attainment=0.1), *missed))) == ""
    )


def test_the_hint_names_the_one_policy_that_ran() -> None:
    """With one policy the hint said "every policy"."""
    line = unchecked_overload_line(SweepPoint(30.0, (result("static-min", slo_attainment=0.029),)))
    assert line == (
        "static-min meets the SLO for only 2.9% of requests: the cluster may be overloaded; add static-max "
        "to --policies to check"
    )


def test_the_benchmarks_markdown_rows_print_rates_as_simulate_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_paper_setting's rows used ``:g`` (``3.33333``, two close rates alike at three digits)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3] / "benchmarks"))
    bench = __import__("bench_paper_setting")
    points = [SweepPoint(r, (result("ecofreq+ecoroute"),)) for r in (10 / 3, 3.334)]
    rows = bench.route_table(points, points, "energy-ttft", "predicted-ttft").splitlines()[-2:]
    assert rows[0].startswith("| 3.333 |") and rows[1].startswith("| 3.334 |")


def test_a_rate_given_with_more_digits_than_printed_is_not_ambiguous() -> None:
    """``--timeline-rate 3.332`` where 3.331 and 3.334 ran said it matched both (the three-digit fallback
    prints all three as 3.33); only a value given as three digits may name a rate that way."""
    rates = (3.331, 3.334)
    with pytest.raises(SimulationError, match=r"3\.332 is not one of the simulated rates"):
        named_rate(3.332, rates)
    with pytest.raises(SimulationError, match="matches several"):
        named_rate(3.33, rates)
    assert named_rate(3.331, rates) == 3.331 and named_rate(3.4, (3.40119, 5.0)) == 3.40119


def test_the_overload_line_prints_no_exponents() -> None:
    """A 1000 req/s trace on a small cluster said ``of 1e+03 arriving``."""
    from voltana.sim.sweep import Overload

    line = Overload(0.01, 0.02, 0.5, 520.0, 1.5, 3.19, 1000.0).describe()
    assert "e+" not in line and "of 1000 arriving" in line and "median TTFT 520x the SLO" in line
