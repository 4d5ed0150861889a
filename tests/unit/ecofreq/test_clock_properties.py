"""Property tests of the clock policies against a slow, independent reference of EcoFreq's constraints.

For random allowed clock sets, SLOs, margins, batches, queues and idle powers (predictors seeded from the
simulated A100): the chosen clock is always allowed; it is never predicted to violate the SLO (for running,
queued and foreseen arrivals, and the sustainable load) when some clock is feasible; it is the max clock when
none is; among feasible clocks it has the least predicted energy above idle (up to hysteresis).
"""

from __future__ import annotations

import math

from ecofreq_helpers import a100, controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voltana.core.controller import FrequencyController
from voltana.core.predictor import features
from voltana.core.types import (
    BatchSnapshot,
    DecisionReason,
    Phase,
    QueuedRequest,
    ScheduledRequest,
    Slo,
)
from voltana.plugins.ecofreq import state_of

NOW_S = 100.0
BUDGET = 8192

clock_sets = st.lists(st.sampled_from(a100().supported_clocks_mhz), min_size=1, max_size=10, unique=True).map(
    lambda clocks: tuple(sorted(clocks))
)
slos = st.builds(Slo, ttft_s=st.floats(0.02, 3.0), itl_s=st.floats(0.004, 0.15))
margins = st.floats(0.0, 0.5)
idle_powers = st.sampled_from((0.0, 63.0))  # total energy, or energy above the A100's idle power


@st.composite
def decode_snapshots(draw: st.DrawFn) -> BatchSnapshot:
    batch = draw(st.integers(1, 512))
    kv_per_request = draw(st.integers(1, max(1, 380_000 // batch)))
    requests = [ScheduledRequest(f"d{i}", 1, kv_per_request, 0.0) for i in range(batch)]
    return BatchSnapshot.build(Phase.DECODE, requests, now_s=NOW_S)


@st.composite
def prefill_snapshots(draw: st.DrawFn) -> BatchSnapshot:
    count = draw(st.integers(0, 6))
    requests = [
        ScheduledRequest(
            f"p{i}",
            draw(st.integers(1, 4096)),
            draw(st.sampled_from((0, 0, 512, 4096))),
            NOW_S - draw(st.floats(0.0, 1.0)),
        )
        for i in range(count)
    ]
    waiting = [
        QueuedRequest(f"q{i}", draw(st.integers(1, 4096)), NOW_S - draw(st.floats(0.0, 1.0)))
        for i in range(draw(st.integers(0 if count else 1, 64)))
    ]
    return BatchSnapshot.build(Phase.PREFILL, requests, now_s=NOW_S, waiting=waiting)


def reference_feasible(ctl: FrequencyController, snapshot: BatchSnapshot, k: int, held: int | None) -> bool:
    """EcoFreq's documented constraints, computed the slow way, request by request."""
    state = state_of(ctl.ctx)
    opts = state.opts
    predictor = ctl.predictor
    clock = ctl.allowed_clocks_mhz[k]
    x0, x1 = features(snapshot)
    done_s = predictor.value_at(x0, x1, clock) if snapshot.requests else 0.0
    done_s += opts.clock_change_latency_s if k != held else 0.0
    if snapshot.phase is Phase.DECODE:
        return done_s <= state.bound_s
    if snapshot.requests:
        oldest = min(r.arrival_time_s for r in snapshot.requests)
        if done_s > oldest + state.bound_s - snapshot.now_s:
            return False
    budget = opts.prefill_token_budget
    c0, c1, c2 = predictor.model.effective_row(predictor.segment_of(float(budget)), k)
    queue = [(q.prompt_tokens, q.arrival_time_s) for q in snapshot.waiting]
    prompts = [p for p, _ in queue]
    total = sum(prompts)
    finish_iteration = [math.ceil(sum(prompts[: i + 1]) / budget) for i in range(len(prompts))]
    for i, (_, arrival_s) in enumerate(queue):
        m = finish_iteration[i]
        work = sum(0.5 * p * p for p, mj in zip(prompts, finish_iteration, strict=True) if mj <= m)
        first_token_s = done_s + c0 * min(m * budget, total) + c1 * work + c2 * m
        if first_token_s > arrival_s + state.bound_s - snapshot.now_s:
            return False
    rate = state.token_rate_tps  # prompt tokens/s this decision foresaw (the estimator: test_arrivals.py)
    mean_prompt = state.prompt_tokens
    full_iteration_s = c0 * budget + c1 * 0.5 * budget * max(mean_prompt, 1.0) + c2
    if rate * full_iteration_s > (1.0 - opts.safety_margin) * budget:  # cannot sustain the arrival rate
        return False
    newcomer = round(mean_prompt) if opts.plan_for_newcomer else 0
    if newcomer > 0:  # a mean prompt arriving now, behind the queue and what arrives during this iteration
        expected = rate * done_s
        tokens = total + newcomer + expected
        work = sum(0.5 * p * p for p in prompts) + 0.5 * newcomer**2 + 0.5 * expected * mean_prompt
        if done_s + c0 * tokens + c1 * work + c2 * math.ceil(tokens / budget) > state.bound_s:
            return False
    return True


def check_decision(ctl: FrequencyController, snapshot: BatchSnapshot) -> None:
    held = state_of(ctl.ctx).clock_index
    decision = ctl.decide(snapshot)
    clocks = ctl.allowed_clocks_mhz
    assert decision.clock_mhz in clocks
    if decision.reason is DecisionReason.PREDICTOR_UNTRUSTED:
        assert decision.clock_mhz == clocks[-1]
        return
    feasible = [k for k in range(len(clocks)) if reference_feasible(ctl, snapshot, k, held)]
    chosen = clocks.index(decision.clock_mhz)
    if not feasible:
        assert decision.clock_mhz == clocks[-1]
        assert decision.reason is DecisionReason.INFEASIBLE
        return
    assert chosen in feasible, (decision, feasible)
    x0, x1 = features(snapshot)
    if snapshot.requests and decision.reason is not DecisionReason.HYSTERESIS:
        idle_w = state_of(ctl.ctx).opts.idle_power_w
        above_idle = [
            ctl.power_model.value_at(x0, x1, c) - idle_w * ctl.predictor.value_at(x0, x1, c) for c in clocks
        ]
        best = min(above_idle[k] for k in feasible)
        assert above_idle[chosen] <= best + 1e-9 * abs(best)


common = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(
    clocks=clock_sets,
    slo=slos,
    margin=margins,
    idle_w=idle_powers,
    first=decode_snapshots(),
    second=decode_snapshots(),
)
def test_decode_choice_is_allowed_feasible_and_least_energy(
    clocks: tuple[int, ...],
    slo: Slo,
    margin: float,
    idle_w: float,
    first: BatchSnapshot,
    second: BatchSnapshot,
) -> None:
    options = {"idle_power_w": idle_w}
    ctl = controller(Phase.DECODE, clocks=clocks, slo=slo, safety_margin=margin, options=options)
    check_decision(ctl, first)
    check_decision(ctl, second)  # with a held clock: hysteresis and clock-change cost in play


@common
@given(
    clocks=clock_sets,
    slo=slos,
    margin=margins,
    idle_w=idle_powers,
    first=prefill_snapshots(),
    second=prefill_snapshots(),
)
def test_prefill_choice_is_allowed_and_meets_every_queued_deadline_when_possible(
    clocks: tuple[int, ...],
    slo: Slo,
    margin: float,
    idle_w: float,
    first: BatchSnapshot,
    second: BatchSnapshot,
) -> None:
    options = {"idle_power_w": idle_w}
    ctl = controller(Phase.PREFILL, clocks=clocks, slo=slo, safety_margin=margin, options=options)
    check_decision(ctl, first)
    check_decision(ctl, second)


@common
@given(clocks=clock_sets, slo=slos, snapshot=st.one_of(decode_snapshots(), prefill_snapshots()))
def test_paper_policy_picks_the_lowest_feasible_clock_or_max(
    clocks: tuple[int, ...], slo: Slo, snapshot: BatchSnapshot
) -> None:
    ctl = controller(snapshot.phase, "voltana-paper", clocks=clocks, slo=slo, safety_margin=0.0)
    decision = ctl.decide(snapshot)
    assert decision.clock_mhz in clocks
    if snapshot.phase is Phase.PREFILL and snapshot.waiting:
        assert decision.clock_mhz == clocks[-1]
        return
    bound = slo.for_phase(snapshot.phase)
    if snapshot.phase is Phase.PREFILL:
        bound -= NOW_S - min(r.arrival_time_s for r in snapshot.requests)
    x0, x1 = features(snapshot)
    feasible = [c for c in clocks if ctl.predictor.value_at(x0, x1, c) <= bound]
    assert decision.clock_mhz == (feasible[0] if feasible else clocks[-1])


@given(clocks=clock_sets, phase=st.sampled_from(Phase), policy=st.sampled_from(("ecofreq", "voltana-paper")))
@settings(max_examples=20, deadline=None)
def test_idle_instance_gets_the_lowest_clock(clocks: tuple[int, ...], phase: Phase, policy: str) -> None:
    ctl = controller(phase, policy, clocks=clocks)
    decision = ctl.decide(BatchSnapshot.build(phase, (), now_s=NOW_S))
    assert decision.clock_mhz == clocks[0]
    assert decision.reason is DecisionReason.IDLE
