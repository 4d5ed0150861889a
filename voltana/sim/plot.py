"""``--plot``: energy saving and SLO attainment vs request rate, and a clock timeline (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from voltana.sim.sweep import SweepPoint


def plot_sweep(points: Sequence[SweepPoint], path: Path, timeline_policy: str | None = None) -> None:
    """Write a PNG: saving vs rate, SLO attainment vs rate, and the clocks of one policy over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_saving, ax_slo, ax_clock) = plt.subplots(3, 1, figsize=(8, 10), constrained_layout=True)
    rates = [p.rate_rps for p in points]
    names = [r.policy for r in points[0].results]
    for index, name in enumerate(names):
        label = name.split(" (")[0]
        savings = [100 * (p.results[index].saving_vs_static_max or 0.0) for p in points]
        attainment = [100 * p.results[index].slo_attainment for p in points]
        ax_saving.plot(rates, savings, marker="o", label=label)
        ax_slo.plot(rates, attainment, marker="o", label=label)
    ax_saving.set(xlabel="request rate (req/s)", ylabel="energy saving vs static max (%)")
    ax_slo.set(xlabel="request rate (req/s)", ylabel="SLO attainment (%)", ylim=(0, 102))
    for ax in (ax_saving, ax_slo):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    # The clock timeline at the highest rate (the most dynamic one), for ``timeline_policy``.
    shown_point = points[-1]
    shown = next(
        (
            r
            for r in shown_point.results
            if r.timeline and (timeline_policy is None or r.policy == timeline_policy)
        ),
        None,
    )
    if shown is not None:
        for instance_id, samples in sorted(shown.timeline.items()):
            times = [t for t, _ in samples] + [shown.span_s]
            clocks = [c for _, c in samples] + [samples[-1][1]]
            ax_clock.step(times, clocks, where="post", label=instance_id, linewidth=0.8)
        ax_clock.legend(fontsize=8)
        ax_clock.set_title(f"clock timeline: {shown.policy} at {shown_point.rate_rps:g} req/s", fontsize=9)
    ax_clock.set(xlabel="time (s)", ylabel="SM clock (MHz)")
    ax_clock.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
