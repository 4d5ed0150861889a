"""``--plot`` (issue 18, item 11): a titled figure, every policy visible at a single rate, and the clock
timeline at a rate the cluster still serves, with a row for every instance."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from voltana.hardware.simulated import PerformanceModel
from voltana.sim.plot import default_timeline_rate, plot_sweep, sweep_figure
from voltana.sim.runner import SimulationSetup
from voltana.sim.sweep import SweepPoint, run_sweep
from voltana.sim.synthetic import synthetic_workload
from voltana.sim.workload import Workload

from .conftest import make_setup

OURS = "ecofreq+ecoroute"
TITLE = "a100-80gb / llama-3.1-8b TP1, 2P+2D, synthetic poisson arrivals, 8 s, SLO TTFT 800 ms / ITL 50 ms"


def workload_at(rate: float) -> Workload:
    return synthetic_workload(rate, 8.0, seed=0)


def sweep(setup: SimulationSetup, policies: list[str], rates: list[float]) -> list[SweepPoint]:
    return run_sweep(setup, policies, workload_at, rates, timeline_policy=OURS)


@pytest.fixture
def close_figures() -> Iterator[None]:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.usefixtures("close_figures")
def test_single_rate_shows_every_policy_and_every_instance(a100_llama: PerformanceModel) -> None:
    policies = ["static-max", "static-min", "voltana-paper", OURS]
    (point,) = sweep(make_setup(a100_llama), policies, [2.0])
    fig, rate = sweep_figure([point], OURS, TITLE, clock_range_mhz=(1005, 1410))
    assert rate == 2.0
    assert fig.get_suptitle() == TITLE
    ax_energy, ax_slo, ax_clock = fig.axes[:3]
    # One bar per policy, each labelled: equal values no longer hide each other as overlapping dots did.
    assert [t.get_text() for t in ax_energy.get_xticklabels()] == policies
    assert len(ax_energy.patches) == len(policies)
    heights = [bar.get_height() for bar in ax_energy.patches]
    assert heights == pytest.approx([r.energy_j / 1e3 for r in point.results])
    assert [t.get_text() for t in ax_slo.get_xticklabels()] == policies
    # At 2 req/s EcoRoute packs every request onto decode-0: decode-1 never runs and still has its row.
    rows = [t.get_text() for t in ax_clock.get_yticklabels()]
    assert rows == ["prefill-0", "prefill-1", "decode-0", "decode-1 (no iterations)"]
    assert f"{OURS} at 2 req/s" in ax_clock.get_title()


@pytest.mark.usefixtures("close_figures")
def test_sweep_timeline_defaults_to_the_highest_rate_static_max_serves(
    a100_llama: PerformanceModel, tmp_path: Path
) -> None:
    setup = make_setup(a100_llama, num_prefill=1, num_decode=1)
    points = sweep(setup, ["static-max", OURS], [2.0, 4.0, 30.0])
    attainment = {p.rate_rps: p.results[0].slo_attainment for p in points}
    assert attainment[4.0] >= 0.9 > attainment[30.0]  # 30 req/s is past what 1P+1D serves
    assert default_timeline_rate(points, OURS) == 4.0
    fig, rate = sweep_figure(points, OURS, TITLE)
    assert rate == 4.0 and "at 4 req/s (highest rate where static-max meets" in fig.axes[2].get_title()
    assert fig.axes[2].get_yticklabels()[0].get_text() == "prefill-0"
    ours_saving = fig.axes[0].get_lines()[1].get_ydata()
    assert not math.isnan(ours_saving[0]) and math.isnan(ours_saving[2])  # overloaded: no saving drawn
    # A chosen rate, and a rate that was not simulated.
    _, chosen = sweep_figure(points, OURS, TITLE, timeline_rate_rps=30.0)
    assert chosen == 30.0
    with pytest.raises(ValueError, match="not one of the simulated rates"):
        sweep_figure(points, OURS, TITLE, timeline_rate_rps=7.0)
    path = tmp_path / "sweep.png"
    assert plot_sweep(points, path, OURS, TITLE) == 4.0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
