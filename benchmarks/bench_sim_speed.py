"""Simulator speed: one hour of the Azure conversation trace on 2P+2D (target <= 20 s: >= 180x real time).

Run: ``.venv/bin/python benchmarks/bench_sim_speed.py`` from the repository root (reads
``tests/data/traces/AzureLLMInferenceTrace_conv.csv``, shipped in the repository). Prints wall time,
simulated time, speed-up over real time and wall microseconds per iteration for each policy; every iteration
goes through the real controller (``decide`` and ``observe``: policy hook, predictor updates, observers).
CPU time is printed too: on a shared machine wall time includes waiting for a core.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from voltana.core.config import VoltanaConfig
from voltana.hardware.simulated import performance_model
from voltana.plugins import get_plugin_manager
from voltana.sim.cluster import ClusterSpec
from voltana.sim.runner import (
    PAPER_MIN_CLOCK_MHZ,
    SimulationSetup,
    kv_bytes_per_token,
    parse_policy,
    run_policy,
)
from voltana.sim.workload import load_workload

TRACE = Path(__file__).resolve().parents[1] / "tests" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
TARGET_S = 20.0
POLICIES = ("static-max", "ecofreq+ecoroute", "voltana-paper")


def main() -> int:
    if not TRACE.is_file():
        print(f"trace not found: {TRACE}", file=sys.stderr)
        return 2
    workload = load_workload(TRACE).truncated(3600.0)
    model = performance_model("a100-80gb", "llama-3.1-8b")
    config = VoltanaConfig(clocks={"min_mhz": PAPER_MIN_CLOCK_MHZ})
    setup = SimulationSetup(
        ClusterSpec(model, 2, 2, kv_bytes_per_token=kv_bytes_per_token(model)),
        config,
        get_plugin_manager().hook,
    )
    table = Table(title=f"1 h Azure conversation trace ({len(workload)} requests), 2P+2D {model.name}")
    columns = ("policy", "wall s", "CPU s", "simulated s", "x real time (wall)", "iterations", "CPU us/iter")
    for column in (*columns, f"wall <= {TARGET_S:g} s", f"CPU <= {TARGET_S:g} s"):
        table.add_column(column, justify="right" if column != "policy" else "left")
    worst_s = 0.0
    for name in POLICIES:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run_policy(setup, parse_policy(name), workload)
        wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        worst_s = max(worst_s, wall_s)
        table.add_row(
            name,
            f"{wall_s:.1f}",
            f"{cpu_s:.1f}",
            f"{result.span_s:.0f}",
            f"{result.span_s / wall_s:.0f}x",
            f"{result.iterations}",
            f"{cpu_s / result.iterations * 1e6:.0f}",
            "yes" if wall_s <= TARGET_S else "NO",
            "yes" if cpu_s <= TARGET_S else "NO",
        )
    Console(width=150).print(table)
    return 0 if worst_s <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
