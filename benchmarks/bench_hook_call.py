"""Cost of dispatching one clock decision: the named policy looked up once vs the old per-iteration broadcast.

Before, every built-in clock plugin implemented a first-result ``voltana_choose_clock`` hook and each checked
``ctx.policy`` against its own name, so every iteration went through pluggy and through every plugin
registered after the one that answered. Now the controller looks the configured policy up once among the
registered ones (``voltana.core.policies.clock_policy``) and calls only it. This benchmark rebuilds the old
broadcast (same plugin order as ``DEFAULT_PLUGINS``, pluggy calling the plugin registered last first) around
the very same policy callables and measures, in one run, the median cost per decision of both paths (in
alternating rounds), their ratio, and the one-time cost of the lookup. The policies: static-max (no work, so
dispatch alone), EcoFreq and the paper's rule on a 64-request decode batch (dispatch next to real work).

    .venv/bin/python benchmarks/bench_hook_call.py [--json out.json]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pluggy
from bench_report import emit, json_path_only
from rich.table import Table

from voltana.core.contexts import ClockContext
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.policies import ClockPolicy, clock_policy, policies_of
from voltana.core.types import BatchSnapshot, ClockDecision, Phase, ScheduledRequest, Slo
from voltana.hardware.simulated import performance_model
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.ecofreq.factory import profile_from_model, seeded_predictors

ROUNDS = 200
CALLS_PER_ROUND = 200
OLD_PROJECT = "voltana-old-broadcast"
CLOCK_PLUGIN_ORDER = ("static-max", "static-min", "static", "ecofreq", "voltana-paper")
"""Registration order of the clock policies before: static_clock, then ecofreq, then paper_policy."""


class _OldSpec:
    @pluggy.HookspecMarker(OLD_PROJECT)(firstresult=True)
    def voltana_choose_clock(self, snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision | None:
        """The removed first-result hook."""


class _OldPlugin:
    """One old-style plugin: answers only for the policy names it owns, None otherwise."""

    def __init__(self, owned: dict[str, ClockPolicy]) -> None:
        self.owned = owned

    @pluggy.HookimplMarker(OLD_PROJECT)
    def voltana_choose_clock(self, snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision | None:
        choose = self.owned.get(ctx.policy)
        if choose is None:
            return None
        return choose(snapshot, ctx)


def old_broadcast(registered: dict[str, ClockPolicy]) -> Any:
    """The old ``pm.hook.voltana_choose_clock`` over the same callables, in the old plugin order."""
    pm = pluggy.PluginManager(OLD_PROJECT)
    pm.add_hookspecs(_OldSpec)
    for names in (("static-max", "static-min", "static"), ("ecofreq",), ("voltana-paper",)):
        pm.register(_OldPlugin({name: registered[name] for name in names}))
    return pm.hook.voltana_choose_clock


def _mean_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1000


def median_call_us(fn: Callable[[], object], rounds: int = ROUNDS, calls: int = CALLS_PER_ROUND) -> float:
    """Median over rounds of the mean cost of one call (µs)."""
    return statistics.median(_mean_call_us(fn, calls) for _ in range(rounds))


def paired_median_us(
    first: Callable[[], object],
    second: Callable[[], object],
    rounds: int = ROUNDS,
    calls: int = CALLS_PER_ROUND,
) -> tuple[float, float]:
    """Medians (µs per call) of two paths measured in alternating rounds, so load on a shared machine hits
    both alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(_mean_call_us(first, calls))
        b.append(_mean_call_us(second, calls))
    return statistics.median(a), statistics.median(b)


def main() -> None:
    json_path = json_path_only(__doc__)
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    registered = {p.name: p.choose for p in policies_of(pm.hook) if p.kind == "clock"}
    old_hook = old_broadcast(registered)
    model = performance_model("a100-80gb", "llama-3.1-8b")
    clocks = tuple(c for c in model.supported_clocks_mhz if c >= 1005)
    predictor, energy = seeded_predictors(profile_from_model(model, clocks), Phase.DECODE, clocks)
    requests = [ScheduledRequest(f"r{i}", 1, 600, 0.0) for i in range(64)]
    snapshot = BatchSnapshot.build(Phase.DECODE, requests, now_s=1.0)
    table = Table(title="clock-policy dispatch per decision (one run)")
    for column in ("policy", "old broadcast µs", "looked up once µs", "old / new"):
        table.add_column(column)
    for name in ("static-max", "ecofreq", "voltana-paper"):
        ctx = ClockContext(
            name,
            "bench",
            Phase.DECODE,
            clocks,
            Slo(0.8, 0.05),
            predictor=predictor,
            power_model=energy,
            options={"idle_power_w": float(model.idle_power_w()), "safety_margin": 0.1},
        )
        choose = clock_policy(pm.hook, name)
        assert old_hook(snapshot=snapshot, ctx=ctx) == choose(snapshot, ctx), name  # same decision
        old_us, new_us = paired_median_us(
            lambda ctx=ctx: old_hook(snapshot=snapshot, ctx=ctx),
            lambda ctx=ctx, choose=choose: choose(snapshot, ctx),
        )
        table.add_row(name, f"{old_us:.2f}", f"{new_us:.2f}", f"{old_us / new_us:.2f}x")
    lookup_us = median_call_us(lambda: clock_policy(pm.hook, "ecofreq"), rounds=50, calls=20)
    table.caption = (
        f"lookup by name, once per controller: {lookup_us:.1f} µs; {len(registered)} clock policies "
        "registered; an iteration on a GPU lasts 5-50 ms"
    )
    emit(table, benchmark="bench_hook_call", json_path=json_path)


if __name__ == "__main__":
    main()
