"""Cost of one plugin-hook call on the per-iteration path (``voltana_choose_clock``).

Prints a table: the median cost of the hook call through pluggy, of calling the policy function directly,
and their ratio (pluggy's dispatch overhead), measured in one run.

    .venv/bin/python benchmarks/bench_hook_call.py [--json out.json]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench_report import emit, json_path_only
from rich.table import Table

from voltana.core.contexts import ClockContext
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest, Slo
from voltana.plugins import DEFAULT_PLUGINS, static_clock

ROUNDS = 200
CALLS_PER_ROUND = 200


def median_call_us(fn: Callable[[], object]) -> float:
    """Median over rounds of the mean cost of one call (µs)."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(CALLS_PER_ROUND):
            fn()
        samples.append((time.perf_counter_ns() - start) / CALLS_PER_ROUND / 1000)
    return statistics.median(samples)


def main() -> None:
    json_path = json_path_only(__doc__.splitlines()[0] if __doc__ else None)
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    requests = [ScheduledRequest(f"r{i}", 1, 600, 0.0) for i in range(64)]
    snapshot = BatchSnapshot.build(Phase.DECODE, requests, now_s=1.0)
    ctx = ClockContext("static-max", "bench", Phase.DECODE, tuple(range(1005, 1411, 15)), Slo(0.8, 0.05))
    hook = pm.hook.voltana_choose_clock
    through_hook = median_call_us(lambda: hook(snapshot=snapshot, ctx=ctx))
    direct = median_call_us(lambda: static_clock.voltana_choose_clock(snapshot, ctx))
    table = Table(title="hook call on the per-iteration path (one run)")
    for column in ("path", "median µs/call", "ratio to direct"):
        table.add_column(column)
    table.add_row("pm.hook.voltana_choose_clock", f"{through_hook:.2f}", f"{through_hook / direct:.1f}x")
    table.add_row("policy function called directly", f"{direct:.2f}", "1.0x")
    impls = len(hook.get_hookimpls())
    table.caption = f"{impls} implementation(s) registered; an iteration on a GPU lasts 5-50 ms"
    emit(table, benchmark="bench_hook_call", json_path=json_path)


if __name__ == "__main__":
    main()
