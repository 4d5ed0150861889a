"""Rendering a power-budget comparison: budgets from the command line, the table, JSON and the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from voltana.core.types import Slo
from voltana.sim.power_budget import COORDINATOR, BudgetRun

_PLOT_MARKERS = ("o", "s", "^", "D", "v")


MIN_BUDGET_W = 10.0
"""Smallest budget in watts the command line takes: a bare ``0.6`` is almost surely a share meant as ``60%``
(one GPU idles at tens of watts, so no real cluster budget is below this)."""


def check_budget_w(value: float, given: str) -> None:
    """Raise ValueError (one line) unless ``value`` (W, written ``given``) is a plausible cluster budget."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"a power budget must be a positive number of watts, got {given!r}")
    if value < MIN_BUDGET_W:
        raise ValueError(
            f"{given!r} W is below {MIN_BUDGET_W:g} W, probably meant as a share of the max-clock peak: "
            "write 60% for a share"
        )


def parse_budgets(text: str, peak_w: float | None) -> list[tuple[float, float | None]]:
    """``60%,75%,900`` -> ``[(0.6 * peak_w, 0.6), (0.75 * peak_w, 0.75), (900.0, None)]`` (W, share of peak).

    Raises ValueError (one line) for an empty list or an empty item, a non-number, a budget below
    :data:`MIN_BUDGET_W` (in watts, or as a share of ``peak_w``), a share outside (0%, 100%], or the same
    budget twice. ``peak_w`` None (not known yet): every check but the share's watts; a share's value is then
    the share itself.
    """
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ValueError("no power budget given")
    budgets: list[tuple[float, float | None]] = []
    for part in parts:
        if not part:
            raise ValueError(f"empty item in {text!r}: write budgets as e.g. '60%,75%,900'")
        try:
            if part.endswith("%"):
                share = float(part[:-1]) / 100.0
                value, shown = share * (1.0 if peak_w is None else peak_w), share
            else:
                value, shown = float(part), None
        except ValueError:
            raise ValueError(
                "a power budget is watts or a percentage of the max-clock peak (e.g. 900 or 60%); "
                f"got {part!r}"
            ) from None
        if shown is not None:
            if not (0 < shown <= 1):
                raise ValueError(
                    f"a share of the max-clock peak must be above 0% and at most 100%, got {part!r}"
                )
            if peak_w is not None and value < MIN_BUDGET_W:
                raise ValueError(
                    f"{part!r} of the max-clock peak ({peak_w:.0f} W) is {value:.3g} W, "
                    f"below {MIN_BUDGET_W:g} W"
                )
        else:
            check_budget_w(value, part)
        if any(math.isclose(value, seen_w) for seen_w, _ in budgets):
            raise ValueError(f"{part!r} repeats a budget already given ({value:.0f} W)")
        budgets.append((value, shown))
    return budgets


def _budget_label(run: BudgetRun) -> str:
    if run.budget_w is None:
        return "none"
    share = f" ({100 * run.budget_share:.4g}%)" if run.budget_share is not None else ""
    return f"{run.budget_w:.0f} W{share}"


def budget_table(runs: Sequence[BudgetRun], slo: Slo, peak_w: float) -> Table:
    """One row per (budget, policy): SLO attainment (TTFT, ITL, both), energy, the cluster's power in 1 s
    windows (mean, max) and the share of windows above the budget."""
    table = Table(
        title=f"power budget (max-clock peak {peak_w:.0f} W; SLO TTFT {slo.ttft_s * 1e3:g} ms / ITL "
        f"{slo.itl_s * 1e3:g} ms)",
        title_justify="left",
        caption="power: the cluster's mean and max over 1 s windows; > budget: share of those windows",
    )
    for column in ("budget", "policy"):
        table.add_column(column, no_wrap=True)
    for column in ("TTFT att.", "ITL att.", "SLO att.", "kJ", "J/tok", "power W\nmean/max", "> budget"):
        table.add_column(column, justify="right")
    for run in runs:
        r = run.result
        windows = run.window_power_w
        mean_w = sum(windows) / len(windows) if windows else 0.0
        policy = run.policy + (f" @ {run.static_clock_mhz} MHz" if run.static_clock_mhz else "")
        if run.infeasible_periods:
            policy += f" ({run.infeasible_periods} infeasible periods)"
        table.add_row(
            _budget_label(run),
            policy,
            f"{r.ttft_attainment:.1%}",
            f"{r.itl_attainment:.1%}",
            f"{r.slo_attainment:.1%}",
            f"{r.energy_j / 1e3:.1f}",
            f"{r.joules_per_token:.3f}",
            f"{mean_w:.0f}/{max(windows, default=0.0):.0f}",
            "-" if run.budget_w is None else f"{run.over_budget_share:.1%}",
        )
    return table


def budget_json(runs: Sequence[BudgetRun], meta: dict[str, Any]) -> dict[str, Any]:
    """``{"meta": ..., "runs": [...]}`` for ``--json``."""
    return {"meta": meta, "runs": [run.to_json() for run in runs]}


def plot_budget(runs: Sequence[BudgetRun], path: Path, title: str) -> None:
    """Write a figure: SLO attainment and energy vs budget per policy, and the cluster's power in 1 s
    windows of the coordinator and of static caps at the lowest budget, with the budget line."""
    import matplotlib  # noqa: PLC0415 - the optional [plot] extra, loaded when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    budgeted = [r for r in runs if r.budget_w is not None]
    policies = list(dict.fromkeys(r.policy for r in budgeted))
    fig, (ax_slo, ax_energy, ax_power) = plt.subplots(1, 3, figsize=(17, 5))
    fig.suptitle(title, fontsize=10)
    for i, policy in enumerate(policies):
        mine = sorted((r for r in budgeted if r.policy == policy), key=lambda r: r.budget_w or 0.0)
        xs = [r.budget_w for r in mine]
        marker = _PLOT_MARKERS[i % len(_PLOT_MARKERS)]
        ax_slo.plot(xs, [100 * r.result.slo_attainment for r in mine], marker=marker, label=policy)
        ax_energy.plot(xs, [r.result.energy_j / 1e3 for r in mine], marker=marker, label=policy)
    for reference in (r for r in runs if r.budget_w is None):
        ax_slo.axhline(100 * reference.result.slo_attainment, linestyle=":", color="grey")
        ax_energy.axhline(reference.result.energy_j / 1e3, linestyle=":", color="grey")
    ax_slo.set(xlabel="power budget (W)", ylabel="SLO attainment (%)", title="SLO attainment (TTFT and ITL)")
    ax_energy.set(xlabel="power budget (W)", ylabel="energy (kJ)", title="energy (dotted: no budget)")
    ax_slo.legend(fontsize=8)
    if budgeted:
        lowest = min(r.budget_w or 0.0 for r in budgeted)
        for run in (r for r in budgeted if r.budget_w == lowest):
            ax_power.plot(range(len(run.window_power_w)), run.window_power_w, label=run.policy, linewidth=1)
        ax_power.axhline(lowest, color="red", linestyle="--", label="budget")
        ax_power.set(
            xlabel="time (s)", ylabel="cluster power, 1 s windows (W)", title=f"{lowest:.0f} W budget"
        )
        ax_power.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    finally:  # closed when the file cannot be written too (OSError: the caller says so in one line)
        plt.close(fig)


def coordinator_holds(runs: Sequence[BudgetRun], max_over_share: float = 0.01) -> list[str]:
    """The must-show check, one line per budget: the coordinator's SLO attainment >= every static per-GPU
    cap policy's at the same budget, and its share of 1 s windows above the budget < ``max_over_share``."""
    lines = []
    for budget in sorted({r.budget_w for r in runs if r.budget_w is not None}):
        at = [r for r in runs if r.budget_w == budget]
        ours = next((r for r in at if r.policy == COORDINATOR), None)
        caps = [r for r in at if r.policy.endswith("+caps")]
        if ours is None or not caps:
            continue
        best_caps = max(caps, key=lambda r: r.result.slo_attainment)
        holds = (
            ours.result.slo_attainment >= best_caps.result.slo_attainment
            and ours.over_budget_share < max_over_share
        )
        lines.append(
            f"{_budget_label(ours)}: coordinator {ours.result.slo_attainment:.1%} vs best caps "
            f"{best_caps.result.slo_attainment:.1%} ({best_caps.policy}); above budget "
            f"{ours.over_budget_share:.1%} of 1 s windows -> {'holds' if holds else 'DOES NOT HOLD'}"
        )
    return lines
