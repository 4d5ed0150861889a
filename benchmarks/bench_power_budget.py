"""Cluster power budget in the paper's setting: Llama-3.1-8B on 2P+2D A100-80GB, the ShareGPT workload, SLO
TTFT 800 ms / ITL 50 ms, budgets of 60 %, 75 % and 90 % of the cluster's max-clock peak power.

At each budget, on the same requests: EcoFreq within the coordinator's ceilings (``ecofreq+coordinator``),
static per-GPU power caps of budget/N under EcoFreq and under the max clock (``ecofreq+caps``,
``static-max+caps``), and every instance pinned at the highest clock whose peak fits (``static-clock``); no
budget (``static-max``, ``ecofreq+ecoroute``) for reference. Prints SLO attainment (TTFT, ITL), energy and
the cluster's power in 1 s windows, then whether the targets hold: the coordinator's SLO attainment >= every
static-cap policy's at the same budget, and its power above the budget in < 1 % of the 1 s windows.

Run: ``.venv/bin/python benchmarks/bench_power_budget.py [--rate 70] [--duration 120]
[--plot docs/power-budget.png] [--json docs/benchmarks/bench_power_budget.json]`` (ShareGPT lengths ship with
the repository; the docs' figure and table come from those two files).
"""

from __future__ import annotations

import sys

from bench_report import (
    add_json_option,
    argument_parser,
    check_distinct_outputs,
    emit,
    plot_file_path,
    progress_bar,
    random_seed,
    request_rate,
    seconds,
    write_plot,
)

from voltana.core.config import VoltanaConfig
from voltana.hardware.simulated import performance_model
from voltana.plugins import get_plugin_manager
from voltana.sim.cluster import ClusterSpec
from voltana.sim.datasets import dataset_workload, tokenizer_for_model
from voltana.sim.power_budget import (
    BUDGET_POLICIES,
    cluster_peak_power_w,
    mean_decode_context,
    run_budget_sweep,
)
from voltana.sim.power_budget_report import budget_table, coordinator_holds, parse_budgets, plot_budget
from voltana.sim.runner import SimulationSetup, allowed_clocks_mhz, kv_bytes_per_token

MODEL = "llama-3.1-8b"
REFERENCES = ("static-max", "ecofreq+ecoroute")


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--rate", type=request_rate, default=70.0, help="ShareGPT request rate (req/s)")
    parser.add_argument("--duration", type=seconds, default=120.0, help="seconds of arrivals")
    parser.add_argument("--budgets", default="60%,75%,90%", help="watts or shares of the max-clock peak")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--plot", type=plot_file_path, default=None, help="write the figure (PNG)")
    add_json_option(parser)
    args = parser.parse_args()
    check_distinct_outputs(parser, args.json, args.plot)
    perf = performance_model("a100-80gb", MODEL)
    config = VoltanaConfig(slo={"ttft_s": 0.8, "itl_s": 0.05})
    setup = SimulationSetup(
        ClusterSpec(perf, 2, 2, kv_bytes_per_token=kv_bytes_per_token(perf)),
        config,
        get_plugin_manager().hook,
        args.seed,
    )
    try:  # the user's rate, duration and budgets: a mistake is one line
        workload = dataset_workload(
            "sharegpt", args.rate, args.duration, args.seed, "poisson", tokenizer_for_model(MODEL)
        )
        clocks = allowed_clocks_mhz(config, perf)
        peak_w = cluster_peak_power_w(setup.cluster, clocks[-1], mean_decode_context(workload))
    except ValueError as exc:  # WorkloadError is one too
        parser.error(str(exc))
    try:
        budgets = parse_budgets(args.budgets, peak_w)
    except ValueError as exc:
        parser.error(f"--budgets: {exc}")
    with progress_bar() as bar:
        task = bar.add_task("simulating", total=len(REFERENCES) + len(budgets) * len(BUDGET_POLICIES))
        runs = run_budget_sweep(
            setup,
            workload,
            budgets,
            references=REFERENCES,
            clocks_mhz=clocks,
            on_run=lambda label, budget: bar.update(task, advance=1, description=f"{label} @ {budget}"),
        )
    title = (
        f"{perf.name}, 2P+2D, {workload.name}, SLO TTFT 800 ms / ITL 50 ms, clocks {clocks[0]}..{clocks[-1]} "
        f"MHz, {len(workload)} request{'s' if len(workload) != 1 else ''}"
    )
    table = budget_table(runs, setup.slo, peak_w)
    table.title = f"{title}\n{table.title}"
    verdicts = coordinator_holds(runs)
    table.caption = f"{table.caption}\n" + "\n".join(verdicts)
    emit(table, benchmark="bench_power_budget", json_path=args.json, width=150)
    if args.plot is not None:
        write_plot(lambda path: plot_budget(runs, path, title), args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(line.endswith("holds") for line in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
