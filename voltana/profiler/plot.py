"""``voltana profile --plot``: latency and energy per iteration vs SM clock for a few batch shapes of each
profiled phase (the U-curve of energy), with each shape's least-energy clock marked (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from voltana.core.predictor import prefill_attention_work
from voltana.core.profile import Profile
from voltana.core.types import Phase
from voltana.profiler.fit import predict

SHAPE_FRACTIONS = (0.05, 0.3, 1.0)
"""Shapes drawn per phase: these fractions of the largest profiled batch (tokens, or requests)."""


def shapes_of(profile: Profile, phase: Phase) -> list[tuple[str, float, float]]:
    """(label, x0, x1) of the drawn batch shapes of ``phase``, within the profiled range."""
    fit = profile.phases[phase]
    out = []
    for fraction in SHAPE_FRACTIONS:
        x0 = max(1.0, round(fit.max_x0 * fraction))
        if phase is Phase.PREFILL:
            out.append((f"{x0:.0f} prompt tokens", x0, prefill_attention_work(x0, 0.0, 1)))
        else:
            kv = fit.max_x1 * fraction
            out.append((f"batch {x0:.0f}, {kv:.0f} KV tokens", x0, kv))
    return out


def least_energy_clock(profile: Profile, phase: Phase, x0: float, x1: float) -> int:
    """The profiled clock of least predicted energy for one batch (MHz)."""
    fit = profile.phases[phase]
    energies = [predict(fit, "energy_j", i, x0, x1) for i in range(len(profile.clocks_mhz))]
    return profile.clocks_mhz[min(range(len(energies)), key=energies.__getitem__)]


def plot_profile(profile: Profile, path: Path) -> Path:
    """Write the PNG: one row per phase, latency (ms) and energy (J) vs clock; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in (Phase.PREFILL, Phase.DECODE) if p in profile.phases]
    fig, axes = plt.subplots(
        len(phases), 2, figsize=(11, 4 * len(phases)), squeeze=False, constrained_layout=True
    )
    clocks = profile.clocks_mhz
    for row, phase in enumerate(phases):
        fit = profile.phases[phase]
        ax_lat, ax_energy = axes[row]
        for label, x0, x1 in shapes_of(profile, phase):
            latency_ms = [1e3 * predict(fit, "latency_s", i, x0, x1) for i in range(len(clocks))]
            energy = [predict(fit, "energy_j", i, x0, x1) for i in range(len(clocks))]
            (line,) = ax_lat.plot(clocks, latency_ms, marker="o", label=label)
            ax_energy.plot(clocks, energy, marker="o", color=line.get_color(), label=label)
            best = least_energy_clock(profile, phase, x0, x1)
            k = clocks.index(best)
            ax_energy.plot([best], [energy[k]], marker="*", markersize=16, color=line.get_color())
            ax_energy.annotate(
                f"{best} MHz", (best, energy[k]), textcoords="offset points", xytext=(4, 8), fontsize=8
            )
        ax_lat.set(xlabel="SM clock (MHz)", ylabel="iteration latency (ms)", title=f"{phase.value}: latency")
        ax_energy.set(
            xlabel="SM clock (MHz)", ylabel="iteration energy (J)", title=f"{phase.value}: energy (* least)"
        )
        for ax in (ax_lat, ax_energy):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(profile.source or "voltana profile", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
