"""Simulator speed: one hour of requests on 2P+2D, wall and CPU time against simulated (real) time.

Workloads:
- ``azure``: the Azure conversation trace (first hour), shipped as
  ``tests/data/traces/AzureLLMInferenceTrace_conv.csv``; target <= 20 s per policy (>= 180x real time).
- ``mooncake``: the Mooncake conversation trace itself (kvcache-ai/Mooncake
  ``FAST25-release/traces/conversation_trace.jsonl``, Apache-2.0, not shipped: give its path with
  ``--mooncake-trace``): 12,031 requests over 3,537 s, prompts up to 126,195 tokens. Its ``hash_ids`` are
  not read (no prefix caching is modelled), so 2P+2D runs overloaded. Issue 18's target: >= 200x real time.
- ``mooncake-like``: a synthetic stand-in for that trace when the file is not at hand, shaped after its
  published statistics: 12,031 requests over 3,537 s (3.4 req/s, bursty), prompts mean 12,035 / median 6,900
  tokens (log-normal through both, capped at 126,000), outputs mean 343 (log-normal, CV 1), bursty gamma
  arrivals (CV 3). No prefix caching is modelled (the real trace reuses ~40% of prompt blocks), so 2P+2D runs
  overloaded: a worst case for queue handling. Issue 18's target: >= 200x real time.

Run: ``.venv/bin/python benchmarks/bench_sim_speed.py [--workload azure|mooncake|mooncake-like|all]
[--mooncake-trace conversation_trace.jsonl] [--policies static-max,...] [--requests N] [--breakdown] [--json
docs/benchmarks/bench_sim_speed.json]`` from the repository root. Every iteration goes through the real
controller (``decide`` and ``observe``: policy hook, predictor updates, observers). CPU time is printed too:
on a shared machine wall time includes waiting for a core. ``x real time`` is simulated span (until the last
request finishes: the time the cluster would really take) / CPU time; ``x arrivals`` divides the arrival
window alone (shorter when the cluster is overloaded and drains a backlog after it). ``target met`` says per
run whether ``x real time`` reaches the workload's target, and a verdict line per run follows the table.
``CPU/iter vs static-max`` compares each policy's CPU per iteration with static max's in the same run (the
machine's load cancels out of that ratio). Other processes on the cores inflate CPU time too (shared caches):
the table's caption gives the load average. ``--breakdown`` runs each simulation a second time with timers
around the controller's ``decide`` and ``observe`` and the GPU model's ``cost``, and adds where the time went
(shares of that run's wall time; the rest is the simulator's own event loop, batching and snapshots). Exit
status 1 when a run misses its target.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from bench_report import add_json_option, argument_parser, count, emit, list_items
from rich.table import Table

from voltana.core.config import VoltanaConfig
from voltana.core.contexts import NO_MODELS
from voltana.core.errors import VoltanaError
from voltana.core.protocols import Controller
from voltana.core.types import Phase
from voltana.hardware.simulated import performance_model
from voltana.plugins import get_plugin_manager
from voltana.sim.cluster import ClusterSpec
from voltana.sim.runner import (
    DEFAULT_POLICIES,
    PAPER_MIN_CLOCK_MHZ,
    SimulationSetup,
    check_policies,
    kv_bytes_per_token,
    parse_policy,
    run_policy,
)
from voltana.sim.synthetic import arrival_times
from voltana.sim.workload import Workload, load_workload

TRACE = Path(__file__).resolve().parents[1] / "tests" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
TARGETS_X = {"azure": 180.0, "mooncake": 200.0, "mooncake-like": 200.0}
POLICIES = DEFAULT_POLICIES  # voltana simulate's defaults

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


def first(workload: Workload, requests: int) -> Workload:
    """The first ``requests`` requests of ``workload`` (those arriving up to the last one's time)."""
    return workload.truncated(float(workload.arrival_s[min(len(workload), requests) - 1]))


class _Timed:
    """``inner`` with a timer around each method named in ``parts`` (method -> part it counts for); every
    other attribute passes through."""

    def __init__(self, inner: Any, seconds: defaultdict[str, float], parts: dict[str, str]) -> None:
        self._inner = inner
        for method, part in parts.items():
            setattr(self, method, self._timer(getattr(inner, method), part, seconds))

    @staticmethod
    def _timer(call: Any, part: str, seconds: defaultdict[str, float]) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = call(*args, **kwargs)
            seconds[part] += time.perf_counter() - start
            return result

        return timed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


BREAKDOWN = ("decide", "observe", "gpu model", "simulator")


def breakdown(setup: SimulationSetup, policy: str, workload: Workload) -> dict[str, float]:
    """Shares of one instrumented run's wall time: controller ``decide`` and ``observe``, the GPU model's
    ``cost``, and the rest (the simulator). Timer overhead is measured and taken off each part."""
    seconds: defaultdict[str, float] = defaultdict(float)
    timed = dataclasses.replace(
        setup,
        cluster=dataclasses.replace(
            setup.cluster, model=_Timed(setup.cluster.model, seconds, {"cost": "gpu model"})
        ),
    )

    def wrap(phase: Phase, instance_id: str, controller: Controller) -> Controller:
        timed_controller: Controller = _Timed(controller, seconds, {"decide": "decide", "observe": "observe"})
        return timed_controller

    start = time.perf_counter()
    # The timers read no model: the instrumented run learns exactly what the timed run learnt.
    result = run_policy(timed, parse_policy(policy), workload, wrap_controller=wrap, wrapper_reads=NO_MODELS)
    total_s = time.perf_counter() - start
    probe: defaultdict[str, float] = defaultdict(float)
    null = _Timed(type("Null", (), {"cost": staticmethod(lambda: None)})(), probe, {"cost": "nothing"})
    calls = 20_000
    probe_start = time.perf_counter()
    for _ in range(calls):
        null.cost()
    overhead_s = (time.perf_counter() - probe_start) / calls  # one timed call around nothing
    parts = {name: max(0.0, seconds[name] - overhead_s * result.iterations) for name in BREAKDOWN[:3]}
    parts["simulator"] = max(0.0, total_s - 3 * overhead_s * result.iterations - sum(parts.values()))
    whole = sum(parts.values())
    return {name: value / whole for name, value in parts.items()}


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--workload",
        choices=("azure", "mooncake", "mooncake-like", "all"),
        default="all",
        help="all: azure, mooncake-like, and mooncake when --mooncake-trace is given (default)",
    )
    parser.add_argument(
        "--mooncake-trace",
        type=Path,
        default=None,
        help="Mooncake's conversation_trace.jsonl (kvcache-ai/Mooncake, FAST25-release/traces)",
    )
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated policies to time (default: voltana simulate's, {','.join(POLICIES)})",
    )
    parser.add_argument("--requests", type=count, default=None, help="only the first N requests")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="run each simulation again, timed per part, and show the shares",
    )
    add_json_option(parser)
    args = parser.parse_args()
    try:  # an empty list or item is refused, as `voltana simulate --policies` refuses it (was dropped)
        names = list_items(args.policies, "--policies", "names separated by single commas")
    except ValueError as exc:
        parser.error(str(exc))
    try:  # every name looked up before the first hour runs
        check_policies(get_plugin_manager().hook, names, oracle=False)  # the oracle is not timed here
    except VoltanaError as exc:
        parser.error(f"--policies: {exc}")
    if args.workload == "mooncake" and args.mooncake_trace is None:
        parser.error(
            "--workload mooncake needs --mooncake-trace PATH (kvcache-ai/Mooncake's "
            "FAST25-release/traces/conversation_trace.jsonl)"
        )
    workloads: dict[str, Workload] = {}
    if args.mooncake_trace is not None and args.workload in ("mooncake", "all"):
        try:  # read before any run: a bad file is one line now, not after the Azure hour
            trace = load_workload(args.mooncake_trace)
        except VoltanaError as exc:
            parser.error(f"--mooncake-trace: {exc}")
        workloads["mooncake"] = trace if args.requests is None else first(trace, args.requests)
    if args.workload in ("azure", "all"):
        if TRACE.is_file():
            azure = load_workload(TRACE).truncated(3600.0)
            workloads["azure"] = azure if args.requests is None else first(azure, args.requests)
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
        for name in names:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = run_policy(setup, parse_policy(name), workload)
            wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
            speed = result.span_s / cpu_s
            ok = ok and speed >= TARGETS_X[label]
            shares = breakdown(setup, name, workload) if args.breakdown else {}
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
                    "arrivals_s": float(workload.arrival_s[-1]),
                    "x_arrivals_cpu": float(workload.arrival_s[-1]) / cpu_s,
                    "target_x": TARGETS_X[label],
                    "iterations": result.iterations,
                    "cpu_us_per_iteration": cpu_s / result.iterations * 1e6,
                    "slo_attainment": result.slo_attainment,
                    "target_met": speed >= TARGETS_X[label],
                    "breakdown": shares,
                }
            )
    per_iteration = {
        (r["workload"], r["policy"]): float(r["cpu_us_per_iteration"])  # type: ignore[arg-type]
        for r in rows
    }
    table = Table(title=f"simulator speed, 2P+2D {model.name} (one run)")
    columns = (
        "workload",
        "policy",
        "requests",
        "wall s",
        "CPU s",
        "simulated s",
        "x real time (CPU)",
        "arrivals s",
        "x arrivals (CPU)",
    )
    extra = ("target", "target met", "iterations", "CPU us/iter", "CPU/iter vs static-max", "SLO att.")
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
            f"{r['arrivals_s']:.0f}",
            f"{r['x_arrivals_cpu']:.0f}x",
            f">= {r['target_x']:.0f}x",
            "yes" if r["target_met"] else "NO",
            f"{r['iterations']}",
            f"{r['cpu_us_per_iteration']:.0f}",
            "-" if base is None else f"{float(r['cpu_us_per_iteration']) / base:.2f}x",  # type: ignore[arg-type]
            f"{r['slo_attainment']:.1%}",
        )
    verdicts = [
        f"{r['workload']} / {r['policy']}: {r['x_real_time_cpu']:.0f}x real time, target >= "
        f"{r['target_x']:.0f}x " + ("met" if r["target_met"] else "NOT met")
        for r in rows
    ]
    load = os.getloadavg()[0]
    table.caption = (
        "x real time: simulated s (until the last request finishes) / CPU s, what the targets are checked on "
        "(azure >= 180x, mooncake and mooncake-like >= 200x); x arrivals: the arrival window alone / CPU s "
        "(an overloaded cluster runs past it while its backlog drains); "
        f"load average {load:.1f} on {os.cpu_count()} CPUs (other processes inflate CPU time)\n"
        + "\n".join(verdicts)
    )
    tables = [table]
    if args.breakdown:
        parts = Table(title="where the time goes (a second run with timers; shares of its wall time)")
        for column in ("workload", "policy", *(f"{name} %" for name in BREAKDOWN)):
            parts.add_column(column, justify="left" if column in ("workload", "policy") else "right")
        for r in rows:
            part = r["breakdown"]
            assert isinstance(part, dict)
            parts.add_row(
                str(r["workload"]), str(r["policy"]), *(f"{100.0 * part[n]:.0f}" for n in BREAKDOWN)
            )
        parts.caption = (
            "decide / observe: the controller (policy, predictors, observers); gpu model: the simulated "
            "GPU's cost; simulator: the rest (events, batching, snapshots, routing)"
        )
        tables.append(parts)
    emit(tables, benchmark="bench_sim_speed", json_path=args.json, width=220)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
