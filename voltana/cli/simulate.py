"""``voltana simulate``: what would voltana save on this workload, on these GPUs? (a simulated P/D cluster).

The command registers through ``voltana_register_commands``; the simulator itself is imported when the
command runs, so ``voltana --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from voltana.cli.state import cli_state, validate_policy_names
from voltana.core.files import cannot_write_plot
from voltana.core.hookspecs import hookimpl
from voltana.plugins import get_plugin_manager

console = Console()
err_console = Console(stderr=True)

SYNTHETIC = "synthetic"
DEFAULT_POLICIES = "static-max,static-min,voltana-paper,ecofreq+ecoroute"


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise _fail(f"--rates must be comma-separated numbers (req/s), got {text!r}") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise _fail(f"--rates must be positive request rates (req/s), got {text!r}")
    return list(dict.fromkeys(rates))  # a rate given twice runs once


def _check_run_options(rate: float | None, rates: str | None, duration: float | None, seed: int) -> None:
    """One line for a rate, window or seed the simulation cannot honour (instead of silently replacing it)."""
    if seed < 0:
        raise _fail(
            f"--seed must be a whole number >= 0 (numpy's random generators take no negative seed), "
            f"got {seed}"
        )
    if rate is not None and rates is not None:
        raise _fail("give --rate or --rates, not both")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise _fail(f"--rate must be a positive request rate (req/s), got {rate:g}")
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise _fail(f"--duration must be a positive number of seconds of arrivals, got {duration:g}")


def simulate(
    ctx: typer.Context,
    gpu: Annotated[str, typer.Option(help="Simulated GPU type.")] = "a100-80gb",
    model: Annotated[str, typer.Option(help="Model profile.")] = "llama-3.1-8b",
    tp: Annotated[int | None, typer.Option(help="Tensor-parallel degree (model default if unset).")] = None,
    prefill: Annotated[int, typer.Option("--prefill", help="Prefill instances.")] = 2,
    decode: Annotated[int, typer.Option("--decode", help="Decode instances.")] = 2,
    ttft: Annotated[float | None, typer.Option(help="TTFT SLO in seconds (config slo.ttft_s).")] = None,
    itl: Annotated[float | None, typer.Option(help="ITL SLO in seconds (config slo.itl_s).")] = None,
    workload: Annotated[
        str,
        typer.Option(
            help="'synthetic', 'sharegpt', 'lmsys' (the paper's workloads) or a trace file (CSV, JSONL)."
        ),
    ] = SYNTHETIC,
    arrivals: Annotated[
        str, typer.Option(help="Arrivals of synthetic/sharegpt/lmsys: poisson or bursty.")
    ] = "poisson",
    rate: Annotated[
        float | None, typer.Option(help="Request rate (req/s); a trace is rescaled to it.")
    ] = None,
    rates: Annotated[str | None, typer.Option(help="Rate sweep, e.g. '2,4,8,12' (req/s).")] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds of arrivals (default: synthetic 300, sharegpt/lmsys 60; trace: all)."),
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated <clock policy>[+<decode route>] list; 'oracle' adds the oracle "
            f"(default {DEFAULT_POLICIES}; not with --power-budget(s), which compares its own fixed set)."
        ),
    ] = None,
    min_clock: Annotated[
        int | None, typer.Option(help="Lowest clock in MHz (default: config, else the paper's 1005).")
    ] = None,
    max_clock: Annotated[
        int | None, typer.Option(help="Highest clock in MHz (default: config, else max).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for workload generation and random routing.")] = 0,
    engine: Annotated[
        str, typer.Option(help="Engine whose decode limits are modelled: vllm or sglang.")
    ] = "vllm",
    max_running: Annotated[
        int | None,
        typer.Option(help="Running-request cap per decode instance (default: the engine's for GPU/model)."),
    ] = None,
    max_model_len: Annotated[
        int | None,
        typer.Option(help="Longest request (prompt + output tokens) accepted (default: model context)."),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(
            help="Write a plot (PNG, or the format its extension names): energy and SLO attainment per "
            "policy (vs rate for a sweep), clock timeline."
        ),
    ] = None,
    timeline_rate: Annotated[
        float | None,
        typer.Option(
            help="Rate (req/s, one of the simulated rates, as given or as the tables print it) of the "
            "plot's clock timeline (default: the highest rate where static-max meets the SLO for >= 90% of "
            "requests)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Run the simulations as tasks on a local Ray with N CPUs.")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray", help="Run the simulations as tasks on the Ray cluster at ADDRESS.")
    ] = None,
    power_budget: Annotated[
        str | None,
        typer.Option(
            help="Cluster power budget, watts or a share of the max-clock peak (e.g. 700 or 60%): compare "
            "the coordinator, static per-GPU power caps and static clocks at it (clocks default to the GPU's "
            "whole range)."
        ),
    ] = None,
    power_budgets: Annotated[
        str | None,
        typer.Option(help="Budget sweep: watts or shares of the max-clock peak, e.g. '60%,75%,90%'."),
    ] = None,
) -> None:
    """Simulate a P/D cluster under several clock/routing policies and compare energy and SLO attainment."""
    # the simulator is imported when the command runs: `voltana --help` stays fast (pyproject: PLC0415)
    from voltana.core.files import OutputPathError
    from voltana.core.files import plot_file as checked_plot_file
    from voltana.hardware.errors import UnknownProfileError
    from voltana.hardware.simulated import performance_model
    from voltana.sim.cluster import ClusterSpec
    from voltana.sim.datasets import DATASET_WORKLOADS, dataset_workload, tokenizer_for_model
    from voltana.sim.engine import EngineConfigError
    from voltana.sim.plot import plot_sweep, timeline_reason
    from voltana.sim.rates import rate_text
    from voltana.sim.report import (
        json_text,
        named_rate,
        point_title,
        policy_table,
        rejected_line,
        residency_table,
        sweep_json,
        unchecked_overload_line,
    )
    from voltana.sim.runner import (
        PAPER_MIN_CLOCK_MHZ,
        SimulationError,
        SimulationSetup,
        allowed_clocks_mhz,
        check_slo_feasible,
        kv_bytes_per_token,
    )
    from voltana.sim.sweep import plan_runs, run_sweep
    from voltana.sim.synthetic import CONV_RATE_RPS, check_request_count, synthetic_workload
    from voltana.sim.workload import Workload, WorkloadError, load_workload

    loaded = cli_state(ctx).loaded()
    validate_policy_names(loaded)  # as config show and router: a name no plugin provides is a config error
    config = loaded.config
    if prefill < 1 or decode < 1:
        raise _fail("--prefill and --decode need at least one instance each")
    if (ttft is not None and not ttft > 0) or (itl is not None and not itl > 0):
        raise _fail("--ttft and --itl must be positive (seconds)")
    _check_run_options(rate, rates, duration, seed)
    budget_mode = power_budget is not None or power_budgets is not None
    if budget_mode:
        _check_budget_options(
            power_budget, power_budgets, policies, rates, workers, ray_address, timeline_rate
        )
    elif config.cluster.power_budget_w is not None:
        err_console.print(
            f"note: cluster.power_budget_w = {config.cluster.power_budget_w:g} W (config) is not used by "
            f"simulate unless asked: give --power-budget {config.cluster.power_budget_w:g} to compare "
            "policies under it",
            highlight=False,
            soft_wrap=True,
        )
    if timeline_rate is not None and plot is None:
        raise _fail("--timeline-rate chooses the rate of the plot's clock timeline: give --plot too")
    try:
        perf = performance_model(gpu, model, tp)
    except UnknownProfileError as exc:
        raise _fail(str(exc)) from None
    clocks = config.clocks
    clock_update: dict[str, Any] = {}
    if min_clock is not None or (clocks.min_mhz is None and not clocks.allowed_mhz and not budget_mode):
        clock_update["min_mhz"] = min_clock if min_clock is not None else PAPER_MIN_CLOCK_MHZ
    if max_clock is not None:
        clock_update["max_mhz"] = max_clock
    slo_update = {k: v for k, v in (("ttft_s", ttft), ("itl_s", itl)) if v is not None}
    config = config.model_copy(
        update={
            "clocks": clocks.model_copy(update=clock_update),
            "slo": config.slo.model_copy(update=slo_update),
        }
    )
    names = _policy_names(DEFAULT_POLICIES if policies is None else policies)
    repeats: list[str] = []
    try:
        plot_file = checked_plot_file(plot, "voltana simulate --plot") if plot is not None else None
    except OutputPathError as exc:
        raise _fail(f"--plot {exc}") from None
    try:
        if workload == SYNTHETIC:
            span_s = duration if duration is not None else 300.0
            sweep_rates = _parse_rates(rates) if rates else [rate if rate is not None else CONV_RATE_RPS]

            def workload_at(r: float) -> Workload:
                return synthetic_workload(r, span_s, seed, arrivals)  # type: ignore[arg-type]

        elif workload in DATASET_WORKLOADS:
            span_s = duration if duration is not None else 60.0
            sweep_rates = _parse_rates(rates) if rates else [rate or 50.0]
            tokenizer = tokenizer_for_model(model)

            def workload_at(r: float) -> Workload:
                return dataset_workload(workload, r, span_s, seed, arrivals, tokenizer)

        else:
            trace = load_workload(workload)
            # Without --rate/--rates the trace is replayed as recorded (x1): its own mean rate only labels
            # the run, it is never rounded and rescaled to (a rounded rate of a sparse trace would be 0).
            rescale = rate is not None or rates is not None
            sweep_rates = _parse_rates(rates) if rates else [rate if rate is not None else trace.rate_rps]

            def workload_at(r: float) -> Workload:
                replayed = trace.at_rate(r) if rescale else trace
                return replayed.truncated(duration) if duration is not None else replayed

        if workload in (SYNTHETIC, *DATASET_WORKLOADS):
            for r in sweep_rates:  # a rate refused later in the sweep stops it before anything runs
                check_request_count(r, span_s)
        probe = workload_at(sweep_rates[0])
        # The run's workload as a whole (each point names its own, with a trace's scale factor at its rate).
        if workload in (SYNTHETIC, *DATASET_WORKLOADS):
            whole_name = (
                probe.name
                if len(sweep_rates) == 1
                else f"{workload} ({arrivals}, {span_s:g} s, seed {seed}; rates as in points)"
            )
        else:
            whole_name = trace.name
        allowed = allowed_clocks_mhz(config, perf)
        setup = SimulationSetup(
            ClusterSpec(
                perf,
                prefill,
                decode,
                kv_bytes_per_token=kv_bytes_per_token(perf),
                engine=engine,
                max_decode_batch=max_running,
                max_model_len=max_model_len,
            ),
            config,
            get_plugin_manager().hook,
            seed,
        )
        limits = setup.cluster.limits()
        check_slo_feasible(perf, setup.slo, probe)
        if budget_mode:
            title = (
                f"{gpu} / {model} TP{perf.tp}, {prefill}P+{decode}D, {probe.name}, SLO TTFT "
                f"{setup.slo.ttft_s * 1e3:g} ms / ITL {setup.slo.itl_s * 1e3:g} ms"
            )
            _run_power_budget(
                setup,
                probe,
                allowed,
                power_budget,
                power_budgets,
                plot=plot_file,
                as_json=as_json,
                title=title,
            )
            return
        _check_policies(names, config.policy.prefill_route)
        names, repeats = _distinct_policies(names, config.policy.prefill_route)
        timeline_policy = _timeline_policy(names) if plot_file else None
        if timeline_rate is not None:  # a rate as the tables print it names the rate simulated
            timeline_rate = named_rate(timeline_rate, sweep_rates)
        total = plan_runs(names, 1, len(allowed)) * len(sweep_rates)
        with _progress(as_json) as bar:
            task = bar.add_task("simulating", total=total)

            def on_run(label: str, r: float) -> None:
                bar.update(task, advance=1, description=f"{label} @ {rate_text(r, sweep_rates)} req/s")

            if workers is not None or ray_address is not None:
                from voltana.sim.ray_runner import run_sweep_on_ray

                points = run_sweep_on_ray(
                    setup, names, workload_at, sweep_rates, address=ray_address, workers=workers,
                    prefill_route=config.policy.prefill_route, timeline_policy=timeline_policy,
                    num_clocks=len(allowed), on_run=on_run,
                )  # fmt: skip
            else:
                points = run_sweep(
                    setup, names, workload_at, sweep_rates, config.policy.prefill_route,
                    timeline_policy=timeline_policy, on_run=on_run,
                )  # fmt: skip
    except (WorkloadError, SimulationError, UnknownProfileError, EngineConfigError) as exc:
        raise _fail(str(exc)) from None
    meta = {
        "gpu": gpu,
        "model": model,
        "performance_model": perf.name,
        "prefill_instances": prefill,
        "decode_instances": decode,
        "slo": {"ttft_s": setup.slo.ttft_s, "itl_s": setup.slo.itl_s},
        "clocks_mhz": [allowed[0], allowed[-1]],
        "workload": whole_name,
        "seed": seed,
        "engine": {
            "name": limits.engine,
            "max_running": limits.max_running,
            "max_model_len": limits.max_model_len,
            "kv_capacity_tokens": limits.kv_capacity_tokens,
        },
    }
    # Piped output (logs, CI) gets a fixed width so that the tables are not cut at 80 columns.
    out = console if console.is_terminal else Console(width=120)
    if as_json:
        print(json_text(sweep_json(points, meta)))
        for point in points:  # stdout stays JSON: the hint goes to stderr, as the note on repeats does
            if hint := unchecked_overload_line(point):
                err_console.print(
                    f"note: at {rate_text(point.rate_rps, sweep_rates)} req/s, {hint}",
                    highlight=False,
                    soft_wrap=True,
                    markup=False,
                )
    else:
        out.print(
            f"[bold]{perf.name}[/]: {prefill}P+{decode}D, SLO TTFT {setup.slo.ttft_s * 1e3:g} ms / "
            f"ITL {setup.slo.itl_s * 1e3:g} ms, clocks {allowed[0]}..{allowed[-1]} MHz, workload {workload}"
        )
        out.print(
            f"decode engine {limits.engine}: at most {limits.max_running} running requests, max_model_len "
            f"{limits.max_model_len}, KV cache {limits.kv_capacity_tokens} tokens per instance"
        )
        for point in points:
            out.print(f"\n[bold]{point_title(point, sweep_rates)}[/]", highlight=False)
            out.print(policy_table(point, setup.slo, None, sweep_rates))
            if point.overload is not None:
                out.print(f"[bold yellow]{point.overload.describe()}[/]", highlight=False)
            elif hint := unchecked_overload_line(point):
                out.print(f"[yellow]{hint}[/]", highlight=False)
            out.print(residency_table(point, sweep_rates))
            refused = rejected_line(point)
            if refused:
                out.print(refused)
        out.print(
            "[dim]saving: energy vs static-max; SLO att.: share of requests meeting TTFT and mean ITL.[/]"
        )
    plot_failure = ""
    if plot_file is not None:  # after the results: a plot that cannot be written loses none of them
        workload_label = (
            f"synthetic {arrivals} arrivals, {span_s:g} s"
            if workload == SYNTHETIC
            else Path(workload).name + (f", first {duration:g} s" if duration is not None else "")
        )
        title = (
            f"{gpu} / {model} TP{perf.tp}, {prefill}P+{decode}D, {workload_label}, "
            f"SLO TTFT {setup.slo.ttft_s * 1e3:g} ms / ITL {setup.slo.itl_s * 1e3:g} ms"
        )
        try:
            shown_rate = plot_sweep(
                points, plot_file, timeline_policy, title, timeline_rate, (allowed[0], allowed[-1])
            )
        except OSError as exc:
            plot_failure = cannot_write_plot(plot_file, exc)
        else:
            shown = next(p for p in points if p.rate_rps == shown_rate)
            why = timeline_reason(shown, chosen_by_default=timeline_rate is None)
            (err_console if as_json else out).print(  # with --json, stdout stays JSON
                f"plot written to {plot_file} (clock timeline of {timeline_policy} at "
                f"{rate_text(shown_rate, sweep_rates)} req/s: {why})",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
    _note_repeats(repeats)  # after the results: a refused run stays one line
    if plot_failure:
        raise _fail(plot_failure)


def _progress(quiet: bool) -> Progress:
    """The progress bar of a simulation run (on stderr; off for ``--json`` and when stderr is not an
    interactive terminal, where it draws nothing and rich would end it with a blank line before the next
    message)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet or not err_console.is_interactive,
    )


def _check_budget_options(
    power_budget: str | None,
    power_budgets: str | None,
    policies: str | None,
    rates: str | None,
    workers: int | None,
    ray_address: str | None,
    timeline_rate: float | None,
) -> None:
    """One line for a power-budget run the command cannot honour."""
    from voltana.sim.power_budget_report import parse_budgets

    if power_budget is not None and power_budgets is not None:
        raise _fail("give --power-budget or --power-budgets, not both")
    if power_budget is not None:
        if "," in power_budget:
            raise _fail(
                f"--power-budget takes one budget, got {power_budget!r}: give several with --power-budgets"
            )
        try:  # syntax, share range, a plausible wattage (the peak is known once the run is set up)
            parse_budgets(power_budget, None)
        except ValueError as exc:
            raise _fail(f"--power-budget: {exc}") from None
    if policies is not None:
        raise _fail(
            "a power-budget run compares a fixed set (the coordinator, static caps, static clocks, with "
            "static-max and ecofreq+ecoroute unbudgeted): drop --policies"
        )
    if rates is not None:
        raise _fail("a power-budget run simulates one rate: give --rate, not --rates")
    if workers is not None or ray_address is not None:
        raise _fail("a power-budget run is not distributed over Ray: drop --workers/--ray")
    if timeline_rate is not None:
        raise _fail("a power-budget run simulates one rate and plots no clock timeline: drop --timeline-rate")


def _run_power_budget(
    setup: Any,
    workload: Any,
    allowed: tuple[int, ...],
    power_budget: str | None,
    power_budgets: str | None,
    *,
    plot: Path | None,
    as_json: bool,
    title: str,
) -> None:
    """``--power-budget``/``--power-budgets``: the coordinator against static caps and static clocks."""
    from voltana.sim.power_budget import (
        BUDGET_POLICIES,
        cluster_peak_power_w,
        mean_decode_context,
        run_budget_sweep,
    )
    from voltana.sim.power_budget_report import (
        budget_json,
        budget_table,
        coordinator_holds,
        parse_budgets,
        plot_budget,
    )
    from voltana.sim.report import json_text

    cluster_config = setup.config.cluster
    peak_w = cluster_peak_power_w(setup.cluster, allowed[-1], mean_decode_context(workload))
    flag, given = (
        ("--power-budget", power_budget) if power_budget is not None else ("--power-budgets", power_budgets)
    )
    try:
        budgets = parse_budgets(given or "", peak_w)
    except ValueError as exc:
        raise _fail(f"{flag}: {exc}") from None
    if power_budget is not None:  # one budget: its share of the peak is shown, in watts as given
        budgets = [(budget_w, budget_w / peak_w if share is None else share) for budget_w, share in budgets]
    for budget_w, _ in budgets:
        if budget_w > peak_w:
            err_console.print(
                f"note: {budget_w:.0f} W is above the cluster's max-clock peak ({peak_w:.0f} W): it does not "
                "bind, every budgeted policy runs as if unbudgeted",
                highlight=False,
                soft_wrap=True,
            )
    references = ("static-max", "ecofreq+ecoroute")
    with _progress(as_json) as bar:
        task = bar.add_task("simulating", total=len(references) + len(budgets) * len(BUDGET_POLICIES))

        def on_run(label: str, budget_w: float | None) -> None:
            where = "no budget" if budget_w is None else f"{budget_w:.0f} W"
            bar.update(task, advance=1, description=f"{label} @ {where}")

        runs = run_budget_sweep(
            setup,
            workload,
            budgets,
            references=references,
            period_s=cluster_config.budget_period_s,
            margin=cluster_config.budget_margin,
            burst_utilization=cluster_config.burst_utilization,
            clocks_mhz=allowed,
            on_run=on_run,
        )
    if as_json:
        meta = {
            "title": title,
            "peak_power_w": peak_w,
            "clocks_mhz": [allowed[0], allowed[-1]],
            "budget_period_s": cluster_config.budget_period_s,
            "budget_margin": cluster_config.budget_margin,
            "burst_utilization": cluster_config.burst_utilization,
        }
        print(json_text(budget_json(runs, meta)))
    out = console if console.is_terminal else Console(width=140)
    if not as_json:
        out.print(f"[bold]{escape(title)}[/], clocks {allowed[0]}..{allowed[-1]} MHz", highlight=False)
        out.print(budget_table(runs, setup.slo, peak_w))
        for line in coordinator_holds(runs):
            out.print(line, highlight=False)
    if plot is not None:  # after the results: a plot that cannot be written loses none of them
        try:
            plot_budget(runs, plot, title)
        except OSError as exc:
            raise _fail(cannot_write_plot(plot, exc)) from None
        # with --json, stdout stays JSON
        (err_console if as_json else out).print(
            f"plot written to {plot}", highlight=False, soft_wrap=True, markup=False
        )


def _policy_names(text: str) -> list[str]:
    """``--policies`` as names, each ``clock[+decode_route]`` without the spaces around it and around ``+``
    (:func:`voltana.sim.runner.split_policy`). Raises typer.Exit (one line, status 2) when no name
    is given or an item is empty."""
    from voltana.sim.runner import split_policy

    if not text.strip():
        raise _fail("--policies is empty")
    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise _fail(f"--policies: an empty item in {text!r}; give names separated by single commas")
    return ["".join(split_policy(part)) for part in parts]


def _distinct_policies(names: list[str], prefill_route: str) -> tuple[list[str], list[str]]:
    """(the names to run, the repeats dropped). Two names are the same policy when they give the same clocks
    and routes (:func:`configured_policy`): ``static-max+round-robin`` is ``static-max``, whose default
    decode route it names. Each policy runs once, where it first appears, under its bare clock name when the
    route is that policy's default and the bare name is among those given or is a reference
    (:data:`REFERENCE_POLICIES`: the savings and the oracle look them up by that name), else under the first
    name given. The others are listed as given, followed by ``(as NAME)`` when spelt differently. ``names``
    have passed :func:`_check_policies`."""
    from voltana.sim.runner import (
        DEFAULT_ROUTES,
        FALLBACK_ROUTES,
        ORACLE,
        REFERENCE_POLICIES,
        configured_policy,
    )

    groups: dict[tuple[str, ...], list[str]] = {}  # (prefill clock, decode clock, routes) -> names given
    for name in names:
        if name == ORACLE:
            key: tuple[str, ...] = (ORACLE, ORACLE, "", "")
        else:
            spec = configured_policy(name, prefill_route)
            key = (spec.prefill_clock, spec.decode_clock, spec.prefill_route, spec.decode_route)
        groups.setdefault(key, []).append(name)
    kept: list[str] = []
    repeats: list[str] = []
    for (_, clock, _, decode_route), given in groups.items():
        bare = clock == ORACLE or decode_route == DEFAULT_ROUTES.get(clock, FALLBACK_ROUTES)[1]
        chosen = clock if bare and (clock in given or clock in REFERENCE_POLICIES) else given[0]
        kept.append(chosen)
        others = list(given)
        others.remove(chosen if chosen in others else others[0])  # the one that runs
        for name in others:
            repeat = name if name == chosen else f"{name} (as {chosen})"
            if repeat not in repeats:
                repeats.append(repeat)
    return kept, repeats


def _note_repeats(repeats: list[str]) -> None:
    """One line on stderr naming the policies ``--policies`` gave more than once (each runs once)."""
    if repeats:
        err_console.print(
            f"note: --policies gives the same policy more than once: {escape(', '.join(repeats))}; each "
            "runs once",
            highlight=False,
            soft_wrap=True,
        )


def _timeline_policy(names: list[str]) -> str:
    """The policy of the plot's clock timeline: the last non-oracle one in ``--policies``; with the oracle
    alone, static max (its reference, which the table shows too)."""
    from voltana.sim.sweep import BASELINE

    return next((n for n in reversed(names) if n != "oracle"), BASELINE)


def _check_policies(names: list[str], prefill_route: str) -> None:
    """Every policy named in ``--policies`` and the config's ``policy.prefill_route`` are registered (one
    line, the core's wording, prefixed by the option or setting at fault;
    :func:`voltana.sim.runner.check_policies`)."""
    from voltana.sim.runner import SimulationError, check_policies

    hook = get_plugin_manager().hook
    check_policies(hook, [], prefill_route)  # its refusal says policy.prefill_route itself
    try:
        check_policies(hook, names, prefill_route)
    except SimulationError as exc:
        raise SimulationError(f"--policies: {exc}") from None


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("simulate")(simulate)
