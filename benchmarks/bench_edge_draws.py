"""The paper grid's two SLO checks read over many arrival draws per point: at the edge of capacity a single
draw's attainment is partly chance, so each point is simulated at ``--draws`` seeds and the checks are made on
the means, with a 95% interval.

Each (point, seed) is exactly one point of ``bench_paper_reproduction.py``'s grid at that seed (its
``simulate_point``: same setup, requests and runs: static 1410 and 1005 MHz, voltana-paper and
ecofreq+ecoroute at every margin). Over the draws of a point:

- attainment: ours at margin 0.1 minus static max, TTFT and ITL, paired per draw (same requests): the mean
  with its 95% percentile-bootstrap interval; the check: mean >= -0.5 points. Next to it, how many single
  draws pass the grid's one-draw check, and on how many draws static max itself stays at >= 90%.
- saving at equal attainment: each policy's mean saving and attainments per margin over the draws; the floor
  is static max's mean TTFT and ITL attainment minus 0.5 points; each policy's best margin reaching it; the
  check: ours' best mean saving >= voltana-paper's. Next to it, the per-draw difference of the two at those
  margins (mean and interval) and how many single draws pass the grid's one-draw frontier check.

Run: ``python benchmarks/bench_edge_draws.py [--points llama-3.1-8b/lmsys@105,...] [--draws 10] [--jobs 2]
[--duration 60] [--crossed] [--json out.json]`` (defaults: the eight near misses below, 10 draws, seeds 0-9;
the whole default run took 36 minutes with ``--jobs 2`` on 2 cores, about 9 CPU minutes per point, more for
LMSYS's long outputs; ``--crossed`` adds three runs per draw). Exit status 1 when a check fails on the means.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench_edge_routing import parse_points
from bench_paper_reproduction import (
    HEADLINE_MARGIN,
    OURS,
    PANELS,
    PAPER,
    Panel,
    RatePoint,
    setup_for,
    simulate_point,
    slo_safe,
)
from bench_report import (
    add_json_option,
    argument_parser,
    emit,
    ignore_interrupts,
    progress_bar,
    seconds,
    stop_workers,
    whole_number,
    worker_count,
)
from rich.table import Table

from voltana.core.errors import VoltanaError
from voltana.sim.datasets import dataset_workload, tokenizer_for_model
from voltana.sim.engine import ENGINES
from voltana.sim.frontier import (
    ATTAINMENT_TOLERANCE,
    DEFAULT_MARGINS,
    EqualAttainment,
    FrontierPoint,
    best_at,
    compare_at_floor,
    mean_frontier,
    paired_interval,
    with_margin,
)
from voltana.sim.metrics import PolicyResult
from voltana.sim.runner import PolicySpec, parse_policy, run_policy
from voltana.sim.synthetic import check_request_count
from voltana.sim.workload import WorkloadError

DEFAULT_POINTS = (
    ("llama-3.1-8b", "sharegpt", 55.0),
    ("llama-3.1-8b", "sharegpt", 60.0),
    ("llama-3.1-8b", "sharegpt", 70.0),
    ("llama-3.1-8b", "lmsys", 75.0),
    ("llama-3.1-8b", "lmsys", 100.0),
    ("llama-3.1-8b", "lmsys", 105.0),
    ("ministral-3b", "lmsys", 130.0),
    ("ministral-3b", "lmsys", 140.0),
)
"""The six points where seed 0 or seed 1 of the committed grid (``docs/data/bench_paper_reproduction*.json``)
misses a check (seven misses) among those static max carries (>= 90%), and the two Llama points at the edge
of what static max carries over 60 s, ShareGPT 70 and LMSYS 100, where ours' ITL attainment is within 0.5
points of static max's either way at a seed."""
CARRIED = 0.9
"""Static max's attainment (TTFT and ITL) at which a draw counts as carried: the issue's 90% line."""


@dataclass(frozen=True)
class AttainmentCheck:
    """Ours at margin 0.1 minus static max over the draws of one point (points of attainment, i.e. x100)."""

    static_max_ttft: float
    static_max_itl: float
    ours_ttft: float
    ours_itl: float
    ttft_diff: tuple[float, float, float]
    itl_diff: tuple[float, float, float]
    single_draws_pass: int
    carried_draws: int

    @property
    def holds(self) -> bool:
        """The issue's check on the means: ours' mean TTFT and ITL each >= static max's minus 0.5 points."""
        bar = -100 * ATTAINMENT_TOLERANCE - 1e-9
        return self.ttft_diff[0] >= bar and self.itl_diff[0] >= bar


@dataclass(frozen=True)
class SavingCheck:
    """Both policies' best margin on the mean frontiers at static max's mean attainment minus 0.5 points
    (``at_floor``: floors as fractions), the paired saving difference there, and the one-draw passes."""

    at_floor: EqualAttainment
    saving_diff: tuple[float, float, float] | None
    single_draws_pass: int

    @property
    def ttft_floor(self) -> float:
        """The TTFT floor in points (%)."""
        return 100 * self.at_floor.ttft_floor

    @property
    def itl_floor(self) -> float:
        """The ITL floor in points (%)."""
        return 100 * self.at_floor.itl_floor

    @property
    def ours(self) -> FrontierPoint | None:
        return self.at_floor.ours

    @property
    def paper(self) -> FrontierPoint | None:
        return self.at_floor.theirs

    @property
    def holds(self) -> bool:
        """Ours reaches the floor and saves at least as much as voltana-paper there on average."""
        return self.at_floor.ours_wins


def attainment_check(draws: list[RatePoint]) -> AttainmentCheck:
    """:class:`AttainmentCheck` of one point's draws (same point, one seed each)."""
    n = len(draws)
    ttft = [100 * (d.ours.ttft_attainment - d.static_max.ttft_attainment) for d in draws]
    itl = [100 * (d.ours.itl_attainment - d.static_max.itl_attainment) for d in draws]
    passed = sum(slo_safe(d) for d in draws)  # the grid's one-draw check
    carried = sum(min(d.static_max.ttft_attainment, d.static_max.itl_attainment) >= CARRIED for d in draws)
    return AttainmentCheck(
        sum(100 * d.static_max.ttft_attainment for d in draws) / n,
        sum(100 * d.static_max.itl_attainment for d in draws) / n,
        sum(100 * d.ours.ttft_attainment for d in draws) / n,
        sum(100 * d.ours.itl_attainment for d in draws) / n,
        paired_interval(ttft),
        paired_interval(itl),
        passed,
        carried,
    )


def saving_check(draws: list[RatePoint]) -> SavingCheck:
    """:class:`SavingCheck` of one point's draws: floors from static max's mean attainments."""
    n = len(draws)
    ttft_floor = sum(d.static_max.ttft_attainment for d in draws) / n - ATTAINMENT_TOLERANCE
    itl_floor = sum(d.static_max.itl_attainment for d in draws) / n - ATTAINMENT_TOLERANCE
    ours = best_at(mean_frontier([d.frontiers[OURS] for d in draws]), ttft_floor, itl_floor)
    paper = best_at(mean_frontier([d.frontiers[PAPER] for d in draws]), ttft_floor, itl_floor)
    diff = None
    if ours is not None and paper is not None:

        def at(points: list[FrontierPoint], margin: float) -> FrontierPoint:
            return next(p for p in points if p.margin == margin)

        diff = paired_interval(
            [
                100
                * (at(d.frontiers[OURS], ours.margin).saving - at(d.frontiers[PAPER], paper.margin).saving)
                for d in draws
            ]
        )
    passed = sum(  # the grid's one-draw check: each draw's own floors and best margins
        compare_at_floor(d.frontiers[OURS], d.frontiers[PAPER], d.static_max).ours_wins for d in draws
    )
    return SavingCheck(EqualAttainment(ttft_floor, itl_floor, ours, paper), diff, passed)


def draw_count(text: str) -> int:
    """``--draws`` as an argparse type: a whole number >= 2 (a mean over one draw is that draw, and its
    interval has no width: the grid itself is the one-draw reading)."""
    return whole_number(text, 2)


def interval(values: tuple[float, float, float] | None) -> str:
    """``mean [low, high]`` in points, or a dash."""
    if values is None:
        return "-"
    mean, low, high = values
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def best(point: FrontierPoint | None) -> str:
    """A mean frontier point as ``margin: saving, TTFT/ITL %``."""
    if point is None:
        return "never reaches"
    return (
        f"{point.margin:g}: {100 * point.saving:.2f}%, "
        f"{100 * point.ttft_attainment:.1f}/{100 * point.itl_attainment:.1f}"
    )


def crossed_specs() -> dict[str, tuple[PolicySpec, dict[str, Any]]]:
    """What ours' gap to the paper's rule is made of (``--crossed``), name -> (policy, ``policy.options``
    over the config's): each clock rule with the other's routes, and ours with its decode load rule off
    (``decode_window_s`` 0: the next iteration's ITL only, as the paper's rule checks)."""
    ours, paper = parse_policy(OURS), parse_policy(PAPER)
    return {
        "paper clocks, ours' routes": (
            dataclasses.replace(
                paper, name="paper clocks, ours' routes", prefill_route=ours.prefill_route,
                decode_route=ours.decode_route,
            ),
            {},
        ),
        "ours' clocks, paper routes": (
            dataclasses.replace(
                ours, name="ours' clocks, paper routes", prefill_route=paper.prefill_route,
                decode_route=paper.decode_route,
            ),
            {},
        ),
        "ours, no decode load rule": (ours, {"decode_window_s": 0.0}),
    }  # fmt: skip


@dataclass(frozen=True)
class Draw:
    """One point at one seed: the grid's runs, and the ``--crossed`` runs at margin 0.1 (name -> result;
    empty without the option)."""

    point: RatePoint
    crossed: dict[str, PolicyResult]


def simulate_draw(
    panel: Panel, rate: float, engine: str, seed: int, duration_s: float, crossed: bool
) -> Draw:
    """The grid's point at ``seed`` (:func:`simulate_point`) and, with ``crossed``, :func:`crossed_specs` on
    the same requests at margin 0.1: what a ``--jobs`` worker runs."""
    point = simulate_point(panel, rate, engine, seed, duration_s, DEFAULT_MARGINS, None)
    runs: dict[str, PolicyResult] = {}
    if crossed:
        setup = with_margin(setup_for(panel.model, engine, seed), HEADLINE_MARGIN)
        workload = dataset_workload(
            panel.workload, rate, duration_s, seed, tokenizer=tokenizer_for_model(panel.model)
        )
        for name, (spec, options) in crossed_specs().items():
            policy = setup.config.policy
            merged = policy.model_copy(update={"options": {**policy.options, **options}})
            config = setup.config.model_copy(update={"policy": merged})
            runs[name] = run_policy(dataclasses.replace(setup, config=config), spec, workload, rate)
    return Draw(point, runs)


def simulate_draws(
    points: list[tuple[str, str, float]],
    draws: int,
    engine: str,
    duration_s: float,
    jobs: int,
    crossed: bool = False,
) -> dict[tuple[str, str, float], list[Draw]]:
    """Every point at seeds ``0..draws-1`` (``jobs`` worker processes when > 1; same results), with a progress
    bar; ``KeyboardInterrupt`` propagates after the workers are stopped."""
    panels = {(p.model, p.workload): p for p in PANELS}
    runs = [(point, seed) for point in points for seed in range(draws)]
    pool = ProcessPoolExecutor(jobs, initializer=ignore_interrupts) if jobs > 1 else None
    try:
        with progress_bar() as bar:
            task = bar.add_task("simulating", total=len(runs))
            futures: list[Future[Draw]] = []
            done: list[Draw] = []
            for (model, workload, rate), seed in runs:
                draw_args = (panels[(model, workload)], rate, engine, seed, duration_s, crossed)
                label = f"{model}/{workload} {rate:g} req/s, seed {seed}"
                if pool is None:
                    bar.update(task, description=label)
                    done.append(simulate_draw(*draw_args))
                    bar.advance(task)
                    continue
                future = pool.submit(simulate_draw, *draw_args)

                def advance(_: Future[Draw], label: str = label) -> None:
                    bar.update(task, advance=1, description=f"{label} done")

                future.add_done_callback(advance)
                futures.append(future)
            done += [f.result() for f in futures]
    except KeyboardInterrupt:
        if pool is not None:
            stop_workers(pool)
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results: dict[tuple[str, str, float], list[Draw]] = {point: [] for point in points}
    for (point, _), result in zip(runs, done, strict=True):
        results[point].append(result)
    return results


def draw_json(seed: int, draw: Draw) -> dict[str, Any]:
    """One draw's numbers behind the tables: attainments, every frontier point and the crossed runs."""
    d = draw.point
    return {
        "seed": seed,
        "static_max": {"ttft": d.static_max.ttft_attainment, "itl": d.static_max.itl_attainment},
        "ours": {"ttft": d.ours.ttft_attainment, "itl": d.ours.itl_attainment},
        "frontiers": {k: [vars(f) for f in v] for k, v in d.frontiers.items()},
        "crossed": {
            name: FrontierPoint.of(name, HEADLINE_MARGIN, r, d.static_max.energy_j).__dict__
            for name, r in draw.crossed.items()
        },
    }


def crossed_table(draws: dict[tuple[str, str, float], list[Draw]], n: int) -> Table:
    """``--crossed``: mean saving and ITL attainment at margin 0.1 of both policies and the crossed runs."""
    names = list(crossed_specs())
    table = Table(
        title=f"What ours' gap is made of, margin {HEADLINE_MARGIN:g}, mean over {n} draws: saving % / ITL %",
        caption=(
            "Saving vs static max on the same requests and ITL attainment, each averaged over the draws. "
            "'paper clocks, ours' routes': the paper's clock rule with ecofreq+ecoroute's prefill and decode "
            "routes; 'ours' clocks, paper routes': the converse; 'ours, no decode load rule': "
            "ecofreq+ecoroute with decode_window_s 0 (the next iteration's ITL only)."
        ),
    )
    for header in ("point", "static max ITL %", PAPER, OURS, *names):
        table.add_column(header, justify="left" if header == "point" else "right")
    for (model, workload, rate), point_draws in draws.items():
        cells = [f"{model}/{workload} {rate:g}"]
        cells.append(f"{sum(100 * d.point.static_max.itl_attainment for d in point_draws) / n:.1f}")
        for pick in (
            lambda d: d.point.paper,
            lambda d: d.point.ours,
            *(lambda d, name=name: d.crossed[name] for name in names),
        ):
            results = [(pick(d), d.point.static_max.energy_j) for d in point_draws]
            saving = sum(100 * (1 - r.energy_j / e) for r, e in results) / n
            itl = sum(100 * r.itl_attainment for r, _ in results) / n
            cells.append(f"{saving:.1f} / {itl:.1f}")
        table.add_row(*cells)
    return table


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--points", default=None, help="model/workload@rate,... (default: the near misses)")
    parser.add_argument(
        "--draws", type=draw_count, default=10, help="seeds per point: 0..N-1, at least 2 (default 10)"
    )
    parser.add_argument("--duration", type=seconds, default=60.0, help="seconds of arrivals (default 60)")
    parser.add_argument(
        "--engine", choices=ENGINES, default="sglang", help="engine defaults (default sglang, as the paper)"
    )
    parser.add_argument(
        "--jobs", type=worker_count, default=1, help="draws simulated at once in worker processes (default 1)"
    )
    parser.add_argument(
        "--crossed",
        action="store_true",
        help="also run each clock rule with the other's routes, and ours without its decode load rule",
    )
    add_json_option(parser)
    args = parser.parse_args()
    try:
        points = parse_points(args.points) if args.points is not None else list(DEFAULT_POINTS)
        for _, _, rate in points:
            check_request_count(rate, args.duration)
    except (ValueError, WorkloadError) as exc:
        parser.error(str(exc))
    try:
        draws = simulate_draws(points, args.draws, args.engine, args.duration, args.jobs, args.crossed)
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except VoltanaError as exc:  # a setup the simulator refuses
        parser.error(str(exc))
    margins = DEFAULT_MARGINS
    n = args.draws
    att_table = Table(
        title=f"Attainment over {n} draws: ours (margin {HEADLINE_MARGIN:g}) minus static max, points",
        caption=(
            f"{args.duration:g} s of Poisson arrivals per draw (seeds 0-{n - 1}), engine {args.engine}, SLO "
            "TTFT 800 ms / ITL 50 ms. Differences are paired per draw (same requests): mean [95% percentile-"
            "bootstrap interval]. Check: mean >= -0.5 points. 'single draws pass': draws where the grid's "
            f"one-draw check holds; 'static max carried': draws where static max keeps >= {100 * CARRIED:g}%."
        ),
    )
    for header in (
        "point", "static max TTFT/ITL %", "ours TTFT/ITL %", "TTFT diff", "ITL diff", "single draws pass",
        "static max carried", "check",
    ):  # fmt: skip
        att_table.add_column(header, justify="left" if header == "point" else "right")
    save_table = Table(
        title=f"Saving at equal attainment over {n} draws: mean frontiers at static max's mean - 0.5 points",
        caption=(
            "Each policy's mean saving (vs static max) and mean TTFT/ITL attainment per margin "
            f"({', '.join(f'{m:g}' for m in margins)}); best margin reaching the floor as 'margin: saving, "
            "TTFT/ITL %'. 'ours - paper per draw': the two best margins' saving difference paired per draw, "
            "points, mean [95% interval]. Check: ours' best mean saving >= voltana-paper's."
        ),
    )
    for header in (
        "point", "floor TTFT/ITL %", "paper best", "ours best", "ours - paper per draw", "single draws pass",
        "check",
    ):  # fmt: skip
        save_table.add_column(header, justify="left" if header == "point" else "right")
    failed: list[str] = []
    for (model, workload, rate), point_draws in draws.items():
        name = f"{model}/{workload} {rate:g}"
        grid_points = [d.point for d in point_draws]
        a, s = attainment_check(grid_points), saving_check(grid_points)
        att_table.add_row(
            name,
            f"{a.static_max_ttft:.1f}/{a.static_max_itl:.1f}",
            f"{a.ours_ttft:.1f}/{a.ours_itl:.1f}",
            interval(a.ttft_diff),
            interval(a.itl_diff),
            f"{a.single_draws_pass}/{n}",
            f"{a.carried_draws}/{n}",
            "yes" if a.holds else "NO",
        )
        save_table.add_row(
            name,
            f"{s.ttft_floor:.1f}/{s.itl_floor:.1f}",
            best(s.paper),
            best(s.ours),
            interval(s.saving_diff),
            f"{s.single_draws_pass}/{n}",
            "yes" if s.holds else "NO",
        )
        if not a.holds:
            failed.append(f"{name} req/s: ours' mean attainment below static max's minus 0.5 points")
        if not s.holds:
            failed.append(f"{name} req/s: ours' best mean saving below voltana-paper's at equal attainment")
    details = {
        f"{model}/{workload}@{rate:g}": [draw_json(seed, d) for seed, d in enumerate(point_draws)]
        for (model, workload, rate), point_draws in draws.items()
    }
    tables = [att_table, save_table] + ([crossed_table(draws, n)] if args.crossed else [])
    emit(
        tables,
        benchmark="bench_edge_draws",
        json_path=args.json,
        width=220,
        details={"duration_s": args.duration, "engine": args.engine, "draws": details, "failed": failed},
    )
    for line in failed:
        print(f"FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
