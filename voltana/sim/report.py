"""Rendering simulation results: rich tables per rate, a plain-text comparison table, JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from rich.table import Table

from voltana.core.types import Slo
from voltana.sim.metrics import PolicyResult
from voltana.sim.rates import RATE_DIGITS, as_given, rate_digits, rate_text, significant
from voltana.sim.runner import SimulationError
from voltana.sim.sweep import BASELINE, OVERLOAD_ATTAINMENT, SweepPoint

RESIDENCY_TOP = 3
"""Clocks per phase in the residency table: the most used ones (``--json`` has every clock)."""


def residency_text(shares: dict[int, float], top: int = RESIDENCY_TOP) -> str:
    """The ``top`` clocks by busy-time share, e.g. ``1005:71% 1050:20% 1410:9%``."""
    best = sorted(shares.items(), key=lambda item: -item[1])[:top]
    return " ".join(f"{clock}:{share:.0%}" for clock, share in sorted(best))


def named_rate(given: float, rates: Sequence[float], option: str = "--timeline-rate") -> float:
    """The rate of the sweep ``rates`` that ``given`` (``option``'s value) names: the one it equals, else the
    one that prints as ``given`` rounds (:func:`rate_text`: the ``3.4`` shown for a trace replayed at its own
    3.40119 req/s), else the one that prints so with three significant digits. Raises
    :class:`~voltana.sim.runner.SimulationError` (one line) where it names none or several (``3.33`` where
    3.331 and 3.334 req/s ran)."""
    if given in rates:
        return given
    sweep_digits = rate_digits(rates)
    for digits in dict.fromkeys((sweep_digits, RATE_DIGITS)):
        printed = significant(given, digits)
        if digits == RATE_DIGITS < sweep_digits and printed != as_given(given):
            break  # given with more digits than three (3.332): not what any table printed
        matches = [rate for rate in rates if significant(rate, digits) == printed]
        if len(matches) == 1:
            return matches[0]
        if matches:
            several = ", ".join(rate_text(rate, rates) for rate in matches)
            raise SimulationError(
                f"{option} {given:g} matches several simulated rates ({several} req/s): give one as printed"
            )
    known = ", ".join(rate_text(rate, rates) for rate in rates)
    raise SimulationError(f"{option} {given:g} is not one of the simulated rates ({known} req/s)")


def _ms(seconds: float) -> str:
    """Milliseconds as the tables print them; ``-`` for no value (NaN: no ITL where every request has one
    output token)."""
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1e3:.0f}" if seconds >= 0.01 else f"{seconds * 1e3:.1f}"


def point_title(point: SweepPoint, rates: Iterable[float] = ()) -> str:
    """What was simulated at ``point``: the requests' own rate and count, the workload, the sweep rate.

    E.g. ``2.44 req/s: 63 requests in 25.4 s of arrivals (gap.csv x1.22111; sweep rate 1 req/s)``: with
    ``--duration`` a window of a rescaled trace has its own rate, not the whole trace's mean. ``rates``: the
    sweep's rates (:func:`rate_text`).
    """
    name = point.workload.split(" (")[0] or "workload"
    offered = point.offered_rate_rps
    rate = "single arrival" if offered is None else f"{rate_text(offered)} req/s"
    span_s = point.arrival_span_s
    span = f"{span_s:.3g}" if span_s < 100 else f"{span_s:.0f}"
    requests = f"{point.num_requests} request{'' if point.num_requests == 1 else 's'}"
    sweep = rate_text(point.rate_rps, rates)
    return f"{rate}: {requests} in {span} s of arrivals ({name}; sweep rate {sweep} req/s)"


def policy_table(point: SweepPoint, slo: Slo, title: str | None = "", rates: Iterable[float] = ()) -> Table:
    """One row per policy: energy, saving, TTFT/ITL p50/p90/p99 (ms), SLO attainment.

    At an overloaded rate (``point.overload``) the saving column reads ``n/a (overload)``: static max itself
    misses the SLO for most requests, so an energy difference there says nothing about a clock policy.
    ``title``: "" for ``<rate> req/s``, None for none (the caller prints its own heading). ``rates``: the
    sweep's rates (:func:`rate_text`).
    """
    default = f"{rate_text(point.rate_rps, rates)} req/s"
    table = Table(title=default if title == "" else title, title_justify="left")
    table.add_column("policy", no_wrap=True)
    for column in (
        "kJ",
        "J/tok",
        "saving",
        "TTFT ms\np50/90/99",
        "ITL ms\np50/90/99",
        "adm. wait ms\np50/99",
    ):
        table.add_column(column, justify="right")
    table.add_column(f"SLO att.\n{_ms(slo.ttft_s)}/{_ms(slo.itl_s)}", justify="right")
    for r in point.results:
        saving = _saving_text(point, r)
        table.add_row(
            r.policy,
            f"{r.energy_j / 1e3:.1f}",
            f"{r.joules_per_token:.3f}",
            saving,
            "/".join(_ms(x) for x in (r.ttft.p50_s, r.ttft.p90_s, r.ttft.p99_s)),
            "/".join(_ms(x) for x in (r.itl.p50_s, r.itl.p90_s, r.itl.p99_s)),
            "/".join(_ms(x) for x in (r.admission_wait.p50_s, r.admission_wait.p99_s)),
            f"{r.slo_attainment:.1%}",
        )
    return table


def _saving_text(point: SweepPoint, result: PolicyResult) -> str:
    if point.overload is not None:
        return "n/a (overload)"
    return "-" if result.saving_vs_static_max is None else f"{result.saving_vs_static_max:+.1%}"


def residency_table(point: SweepPoint, rates: Iterable[float] = ()) -> Table:
    """Clock residency per policy and phase: the :data:`RESIDENCY_TOP` most used clocks by share of busy
    time (the headers say so: the shares shown need not add up to 100%). ``rates``: the sweep's rates
    (:func:`rate_text`)."""
    table = Table(
        title=f"clock residency (MHz: share of busy time) at {rate_text(point.rate_rps, rates)} req/s",
        title_justify="left",
    )
    table.add_column("policy", no_wrap=True)
    table.add_column(f"prefill\ntop {RESIDENCY_TOP} clocks")
    table.add_column(f"decode\ntop {RESIDENCY_TOP} clocks")
    for r in point.results:
        table.add_row(
            r.policy,
            residency_text(r.clock_residency.get("prefill", {})),
            residency_text(r.clock_residency.get("decode", {})),
        )
    return table


def unchecked_overload_line(point: SweepPoint) -> str:
    """One line when static max did not run and every policy met the SLO for fewer than
    :data:`~voltana.sim.sweep.OVERLOAD_ATTAINMENT` of the requests, else ''.

    The overload check needs static max (:func:`~voltana.sim.sweep.find_overload`): without it these results
    cannot tell a cluster that is short at any clock from policies whose clocks are too low, so the line
    says the cluster may be overloaded and how to find out. With one policy the line names it.
    """
    if point.overload is not None or not point.results or find(point, BASELINE) is not None:
        return ""
    best = max(point.results, key=lambda r: r.slo_attainment)
    if best.slo_attainment >= OVERLOAD_ATTAINMENT:
        return ""
    if len(point.results) == 1:
        who = f"{best.policy} meets the SLO for only {best.slo_attainment:.1%} of requests"
    else:
        who = (
            f"every policy meets the SLO for under {OVERLOAD_ATTAINMENT:.0%} of requests "
            f"(best: {best.policy}, {best.slo_attainment:.1%})"
        )
    return f"{who}: the cluster may be overloaded; add {BASELINE} to --policies to check"


def rejected_line(point: SweepPoint) -> str:
    """One line on the requests the engine refused at this rate (the same under every policy), or ''."""
    if not point.results:
        return ""
    first = point.results[0]
    if not (first.rejected_over_context or first.rejected_over_kv):
        return ""
    return (
        f"refused by the engine (HTTP 400, not simulated): {first.rejected_over_context} longer than "
        f"max_model_len, {first.rejected_over_kv} larger than a decode instance's KV cache"
    )


def comparison_markdown(points: Sequence[SweepPoint]) -> str:
    """A markdown table: one row per rate, per policy ``saving / SLO attainment`` (``n/a (overload)`` for the
    saving at overloaded rates)."""
    policies = [r.policy.split(" (")[0] for r in points[0].results]
    lines = [
        "| req/s | " + " | ".join(policies) + " |",
        "|---:|" + "---:|" * len(policies),
    ]
    rates = [point.rate_rps for point in points]
    for point in points:
        cells = []
        for r in point.results:
            cells.append(f"{_saving_text(point, r)} / {r.slo_attainment:.1%}")
        lines.append(f"| {rate_text(point.rate_rps, rates)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finite_json(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, scalars) with every non-finite float replaced by None: JSON has no
    NaN or infinity (``json.dumps`` writes ``NaN``, which strict parsers refuse), and a percentile over no
    samples (the ITL of requests with one output token each) is NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


def json_text(data: Any) -> str:
    """``data`` as the JSON that ``--json`` prints and the benchmarks write: indented, non-finite numbers as
    ``null`` (:func:`finite_json`)."""
    return json.dumps(finite_json(data), indent=2, allow_nan=False)


def sweep_json(points: Sequence[SweepPoint], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything, JSON-ready: run settings and per rate, per policy results."""
    return {
        **meta,
        "points": [
            {
                "rate_rps": p.rate_rps,
                "workload": p.workload,
                "num_requests": p.num_requests,
                "arrival_span_s": p.arrival_span_s,
                "offered_rate_rps": p.offered_rate_rps,
                "overload": None if p.overload is None else asdict(p.overload),
                "results": [r.to_json() for r in p.results],
            }
            for p in points
        ],
    }


def find(point: SweepPoint, policy: str) -> PolicyResult | None:
    """The result of ``policy`` (display name prefix) at ``point``."""
    return next((r for r in point.results if r.policy.split(" (")[0] == policy), None)
