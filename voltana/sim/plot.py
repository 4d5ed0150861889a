"""``--plot``: energy and SLO attainment per policy (vs request rate for a sweep), and a clock timeline.

The figure (matplotlib, Agg backend) has a title naming the GPU, model, cluster, workload and SLOs, and
three panels:

- a rate sweep: energy saving vs static max and SLO attainment vs the sweep rate, one line per policy with
  its own marker and line style (so that equal values stay visible); overloaded rates (static max meets the
  SLO for under half the requests, :data:`voltana.sim.sweep.OVERLOAD_ATTAINMENT`) are shaded and have no
  saving plotted;
- a single rate: the same as bars, one per policy, with their values written on them;
- the clock timeline of one policy at one rate: one row per instance (every prefill and decode instance,
  also one that never ran), coloured by its SM clock over time. The rate defaults to
  :func:`default_timeline_rate`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voltana.sim.metrics import PolicyResult
from voltana.sim.rates import rate_text
from voltana.sim.report import point_title
from voltana.sim.runner import SimulationError
from voltana.sim.sweep import BASELINE, SweepPoint

TIMELINE_ATTAINMENT = 0.9
"""The default timeline rate is the highest at which static max meets the SLO for at least this share."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def _label(result: PolicyResult) -> str:
    return result.policy.split(" (")[0]


def _result(point: SweepPoint, policy: str) -> PolicyResult | None:
    return next((r for r in point.results if _label(r) == policy), None)


def default_timeline_rate(points: Sequence[SweepPoint], timeline_policy: str | None = None) -> float:
    """The highest rate where static max meets the SLO for >= 90% of requests (the busiest rate that is
    still served; at higher rates every policy runs flat out). Without static max among the results, the
    same test on ``timeline_policy``. If no rate passes, the lowest rate."""
    judge = BASELINE if any(_result(p, BASELINE) for p in points) else timeline_policy
    served = [
        p.rate_rps
        for p in points
        if judge is not None
        and (r := _result(p, judge)) is not None
        and r.slo_attainment >= TIMELINE_ATTAINMENT
    ]
    return max(served) if served else min(p.rate_rps for p in points)


def timeline_reason(point: SweepPoint, chosen_by_default: bool) -> str:
    """Why the clock timeline shows ``point``'s rate: ``--timeline-rate``, or the default rule's outcome."""
    base = _result(point, BASELINE)
    if not chosen_by_default:
        return "--timeline-rate"
    if base is not None and base.slo_attainment < TIMELINE_ATTAINMENT:
        return f"lowest rate: {BASELINE} meets the SLO for < {TIMELINE_ATTAINMENT:.0%} at every rate"
    return f"highest rate where {BASELINE} meets the SLO for >= {TIMELINE_ATTAINMENT:.0%}"


def _instance_order(instance_id: str) -> tuple[int, int, str]:
    match = re.fullmatch(r"(prefill|decode)-(\d+)", instance_id)
    if match is None:
        return (2, 0, instance_id)
    return (0 if match[1] == "prefill" else 1, int(match[2]), instance_id)


def plot_sweep(
    points: Sequence[SweepPoint],
    path: Path,
    timeline_policy: str | None = None,
    title: str = "",
    timeline_rate_rps: float | None = None,
    clock_range_mhz: tuple[int, int] | None = None,
) -> float:
    """Write the PNG of :func:`sweep_figure` to ``path``; return the rate (req/s) of the clock timeline."""
    import matplotlib.pyplot as plt

    fig, rate = sweep_figure(points, timeline_policy, title, timeline_rate_rps, clock_range_mhz)
    try:
        fig.savefig(path, dpi=110)
    finally:  # closed when the file cannot be written too (OSError: the caller says so in one line)
        plt.close(fig)
    return rate


def sweep_figure(
    points: Sequence[SweepPoint],
    timeline_policy: str | None = None,
    title: str = "",
    timeline_rate_rps: float | None = None,
    clock_range_mhz: tuple[int, int] | None = None,
) -> tuple[Any, float]:
    """The figure (see the module doc) and the rate (req/s) of its clock timeline.

    ``timeline_rate_rps`` must be one of the points' rates (None: :func:`default_timeline_rate`); raises
    :class:`~voltana.sim.runner.SimulationError` for a rate that is not among them. ``clock_range_mhz``:
    the colour scale of the timeline (the allowed clocks' lowest and highest; None: the clocks that occur).
    Close the figure with ``plt.close``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = (
        timeline_rate_rps if timeline_rate_rps is not None else default_timeline_rate(points, timeline_policy)
    )
    rates = [p.rate_rps for p in points]
    shown_point = next((p for p in points if p.rate_rps == rate), None)
    if shown_point is None:
        known = ", ".join(rate_text(r, rates) for r in rates)
        raise SimulationError(f"timeline rate {rate:g} req/s is not one of the simulated rates ({known})")
    fig, (ax_energy, ax_slo, ax_clock) = plt.subplots(
        3, 1, figsize=(9, 11), constrained_layout=True, gridspec_kw={"height_ratios": (1, 1, 1.2)}
    )
    if title:
        fig.suptitle(title, fontsize=10)
    if len(points) == 1:
        _bars(ax_energy, ax_slo, points[0])
    else:
        _rate_lines(ax_energy, ax_slo, points)
    _timeline(fig, ax_clock, shown_point, timeline_policy, timeline_rate_rps is None, clock_range_mhz, rates)
    return fig, rate


def _rate_lines(ax_saving: Any, ax_slo: Any, points: Sequence[SweepPoint]) -> None:
    rates = [p.rate_rps for p in points]
    for index, result in enumerate(points[0].results):
        style = {
            "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)],
            "markersize": 7 - index % 3,
            "alpha": 0.85,
            "label": _label(result),
        }
        results = [p.results[index] for p in points]
        savings = [
            float("nan")
            if p.overload is not None or r.saving_vs_static_max is None
            else 100 * r.saving_vs_static_max
            for p, r in zip(points, results, strict=True)
        ]
        ax_saving.plot(rates, savings, **style)
        ax_slo.plot(rates, [100 * r.slo_attainment for r in results], **style)
    overloaded = [p.rate_rps for p in points if p.overload is not None]
    for ax in (ax_saving, ax_slo):
        for i, point in enumerate(points):
            if point.overload is None:
                continue
            left = (rates[i - 1] + point.rate_rps) / 2 if i > 0 else point.rate_rps
            right = (rates[i + 1] + point.rate_rps) / 2 if i + 1 < len(rates) else point.rate_rps
            ax.axvspan(left, right, color="red", alpha=0.08, lw=0)
        ax.grid(alpha=0.3)
        ax.set_xlabel("request rate (req/s)")
    ax_saving.set_ylabel("energy saving vs static max (%)")
    if overloaded:
        ax_saving.set_title(
            "shaded: overloaded (static max < 50% SLO attainment), no saving shown", fontsize=8
        )
    ax_slo.axhline(100 * TIMELINE_ATTAINMENT, color="grey", lw=0.8, ls=":")
    ax_slo.set(ylabel="SLO attainment (%)", ylim=(0, 102))
    ax_saving.legend(fontsize=8)
    ax_slo.legend(fontsize=8)


def _bars(ax_energy: Any, ax_slo: Any, point: SweepPoint) -> None:
    """One rate: energy (kJ) per policy with its saving, and SLO attainment (joint, TTFT, ITL) per policy."""
    results = point.results
    labels = [r.policy.replace(" (", "\n(") for r in results]  # the oracle's clocks on a second line
    positions = list(range(len(results)))
    energy_kj = [r.energy_j / 1e3 for r in results]
    bars = ax_energy.bar(positions, energy_kj, color=[f"C{i}" for i in positions])
    notes = [
        "n/a (overload)"
        if point.overload is not None
        else ("" if r.saving_vs_static_max is None else f"{r.saving_vs_static_max:+.1%}")
        for r in results
    ]
    ax_energy.bar_label(
        bars, [f"{kj:.1f} kJ\n{note}" for kj, note in zip(energy_kj, notes, strict=True)], fontsize=8
    )
    ax_energy.set_xticks(positions, labels, fontsize=8)
    ax_energy.set_ylabel("energy (kJ); label: saving vs static max")
    ax_energy.set_ylim(0, max(energy_kj) * 1.25)
    ax_energy.set_title(point_title(point), fontsize=9)
    width = 0.27
    for offset, (name, values) in enumerate(
        (
            ("TTFT and ITL", [r.slo_attainment for r in results]),
            ("TTFT", [r.ttft_attainment for r in results]),
            ("ITL", [r.itl_attainment for r in results]),
        )
    ):
        shifted = [x + (offset - 1) * width for x in positions]
        group = ax_slo.bar(shifted, [100 * v for v in values], width, label=name, alpha=1.0 - 0.3 * offset)
        if offset == 0:
            ax_slo.bar_label(group, [f"{v:.1%}" for v in values], fontsize=7)
    ax_slo.set_xticks(positions, labels, fontsize=8)
    ax_slo.set(ylabel="SLO attainment (%)", ylim=(0, 112))
    ax_slo.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    for ax in (ax_energy, ax_slo):
        ax.grid(alpha=0.3, axis="y")


def _timeline(
    fig: Any,
    ax: Any,
    point: SweepPoint,
    policy: str | None,
    chosen_by_default: bool,
    clock_range_mhz: tuple[int, int] | None,
    rates: Sequence[float] = (),
) -> None:
    import matplotlib
    from matplotlib import cm, colors

    shown = next(
        (r for r in point.results if r.timeline and (policy is None or r.policy == policy)),
        None,
    )
    ax.set_xlabel("time (s)")
    if shown is None:
        ax.set_title("clock timeline: not recorded", fontsize=9)
        return
    instances = sorted(shown.timeline, key=_instance_order)
    clocks = [clock for samples in shown.timeline.values() for _, clock in samples]
    low, high = clock_range_mhz if clock_range_mhz is not None else (min(clocks), max(clocks))
    norm = colors.Normalize(vmin=low, vmax=high if high > low else low + 1)
    cmap = matplotlib.colormaps["viridis"]  # low clocks dark, high clocks bright
    for row, instance_id in enumerate(instances):
        samples = shown.timeline[instance_id]
        if not samples:
            continue
        ends = [t for t, _ in samples[1:]] + [shown.span_s]
        spans = [(start, end - start) for (start, _), end in zip(samples, ends, strict=True)]
        ax.broken_barh(
            spans, (row - 0.4, 0.8), facecolors=[cmap(norm(clock)) for _, clock in samples], linewidth=0
        )
    ax.set_yticks(
        range(len(instances)),
        [i if shown.timeline[i] else f"{i} (no iterations)" for i in instances],
        fontsize=8,
    )
    ax.set_ylim(len(instances) - 0.5, -0.5)
    ax.set_xlim(0, shown.span_s)
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
    bar.set_label("SM clock (MHz)")
    why = timeline_reason(point, chosen_by_default)
    rate = rate_text(point.rate_rps, rates)
    ax.set_title(
        f"clock timeline: {shown.policy} at {rate} req/s ({why}); one row per instance",
        fontsize=9,
    )
