"""Simulator speed: one hour of requests on 2P+2D, wall and CPU time against simulated (real) time.

Workloads:
- ``azure``: the Azure conversation trace (first hour), shipped as
  ``tests/data/traces/AzureLLMInferenceTrace_conv.csv``; target <= 20 s per policy (>= 180x real time).
- ``mooncake-like``: a synthetic stand-in for the Mooncake conversation trace (kvcache-ai/Mooncake
  ``FAST25-release/traces/conversation_trace.jsonl``, not available here), shaped after its published
  statistics: 12,031 requests over 3,537 s (3.4 req/s, bursty), prompts mean 12,035 / median 6,900 tokens
  (log-normal through both, capped at 126,000), outputs mean 343 (log-normal, CV 1), bursty gamma
  arrivals (CV 3). No prefix caching is modelled (the real trace reuses ~40% of prompt blocks), so 2P+2D
  runs overloaded: a worst case for queue handling. Issue 18's target: >= 200x real time.

Run: ``.venv/bin/python benchmarks/bench_sim_speed.py [--workload azure|mooncake-like|all]
[--policies static-max,...] [--requests N] [--json docs/benchmarks/bench_sim_speed.json]`` from the
repository root. Every iteration goes through the real controller (``decide`` and ``observe``: policy hook,
predictor updates, observers). CPU time is printed too: on a shared machine wall time includes waiting for a
core. ``x real time`` is simulated span / CPU time; ``CPU/iter vs static-max`` compares each policy's CPU
per iteration with static max's in the same run (the machine's load cancels out of that ratio). Exit status 1
when a run misses its target.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from bench_report import add_json_option, emit
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
from voltana.sim.synthetic import arrival_times
from voltana.sim.workload import Workload, load_workload

TRACE = Path(__file__).resolve().parents[1] / "tests" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
TARGETS_X = {"azure": 180.0, "mooncake-like": 200.0}
POLICIES = ("static-max", "ecofreq+ecoroute", "voltana-paper")

# Mooncake conversation trace, published statistics (see module docstring).
MOONCAKE_REQUESTS = 12031
MOONCAKE_SPAN_S = 3537.0
MOONCAKE_PROMPT_MEAN = 12035.0
MOONCAKE_PROMPT_MEDIAN = 6900.0
MOONCAKE_PROMPT_MAX = 126000
MOONCAKE_OUTPUT_MEAN = 343.0


def mooncake_like(seed: int = 0, requests: int | None = None) -> Workload:
    """The synthetic Mooncake-like hour (first ``requests`` requests if given)."""
    rng = np.random.default_rng(seed)
    times = arrival_times(rng, MOONCAKE_REQUESTS / MOONCAKE_SPAN_S, MOONCAKE_SPAN_S, "bursty")
    n = len(times)
    sigma = math.sqrt(
        2.0 * math.log(MOONCAKE_PROMPT_MEAN / MOONCAKE_PROMPT_MEDIAN)
    )  # mean/median = e^(s^2/2)
    prompts = np.clip(
        np.rint(rng.lognormal(math.log(MOONCAKE_PROMPT_MEDIAN), sigma, n)), 1, MOONCAKE_PROMPT_MAX
    )
    out_sigma = math.sqrt(math.log(2.0))  # CV 1
    outputs = np.maximum(
        1, np.rint(rng.lognormal(math.log(MOONCAKE_OUTPUT_MEAN) - out_sigma**2 / 2, out_sigma, n))
    )
    keep = n if requests is None else min(n, requests)
    return Workload(
        "mooncake-like", times[:keep], prompts[:keep].astype(np.int64), outputs[:keep].astype(np.int64)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=("azure", "mooncake-like", "all"), default="all")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--requests", type=int, default=None, help="only the first N requests")
    add_json_option(parser)
    args = parser.parse_args()
    workloads: dict[str, Workload] = {}
    if args.workload in ("azure", "all"):
        if TRACE.is_file():
            trace = load_workload(TRACE).truncated(3600.0)
            workloads["azure"] = (
                trace
                if args.requests is None
                else trace.truncated(float(trace.arrival_s[min(len(trace), args.requests) - 1]))
            )
        else:
            print(f"azure: trace not found: {TRACE}", file=sys.stderr)
    if args.workload in ("mooncake-like", "all"):
        workloads["mooncake-like"] = mooncake_like(requests=args.requests)
    if not workloads:
        return 2
    model = performance_model("a100-80gb", "llama-3.1-8b")
    config = VoltanaConfig(clocks={"min_mhz": PAPER_MIN_CLOCK_MHZ})
    setup = SimulationSetup(
        ClusterSpec(model, 2, 2, kv_bytes_per_token=kv_bytes_per_token(model)),
        config,
        get_plugin_manager().hook,
    )
    rows: list[dict[str, object]] = []
    ok = True
    for label, workload in workloads.items():
        for name in [p.strip() for p in args.policies.split(",") if p.strip()]:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = run_policy(setup, parse_policy(name), workload)
            wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
            speed = result.span_s / cpu_s
            ok = ok and speed >= TARGETS_X[label]
            rows.append(
                {
                    "workload": label,
                    "requests": len(workload),
                    "mean_prompt_tokens": float(workload.input_tokens.mean()),
                    "max_prompt_tokens": int(workload.input_tokens.max()),
                    "policy": name,
                    "wall_s": wall_s,
                    "cpu_s": cpu_s,
                    "simulated_s": result.span_s,
                    "x_real_time_cpu": speed,
                    "target_x": TARGETS_X[label],
                    "iterations": result.iterations,
                    "cpu_us_per_iteration": cpu_s / result.iterations * 1e6,
                    "slo_attainment": result.slo_attainment,
                }
            )
    per_iteration = {
        (r["workload"], r["policy"]): float(r["cpu_us_per_iteration"])  # type: ignore[arg-type]
        for r in rows
    }
    table = Table(title=f"simulator speed, 2P+2D {model.name} (one run)")
    columns = ("workload", "policy", "requests", "wall s", "CPU s", "simulated s", "x real time (CPU)")
    extra = ("target", "iterations", "CPU us/iter", "CPU/iter vs static-max", "SLO att.")
    for column in (*columns, *extra):
        table.add_column(column, justify="left" if column in ("workload", "policy") else "right")
    for r in rows:
        base = per_iteration.get((r["workload"], "static-max"))
        table.add_row(
            str(r["workload"]),
            str(r["policy"]),
            f"{r['requests']}",
            f"{r['wall_s']:.1f}",
            f"{r['cpu_s']:.1f}",
            f"{r['simulated_s']:.0f}",
            f"{r['x_real_time_cpu']:.0f}x",
            f">= {r['target_x']:.0f}x",
            f"{r['iterations']}",
            f"{r['cpu_us_per_iteration']:.0f}",
            "-" if base is None else f"{float(r['cpu_us_per_iteration']) / base:.2f}x",  # type: ignore[arg-type]
            f"{r['slo_attainment']:.1%}",
        )
    table.caption = "x real time: simulated s / CPU s; targets: azure >= 180x, mooncake-like >= 200x"
    emit(table, benchmark="bench_sim_speed", json_path=args.json, width=170)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
