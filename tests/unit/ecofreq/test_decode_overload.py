"""Decode EcoFreq after an overload: a request's ITL is the mean of its gaps, so one that ran behind the ITL
bound (iterations above it while the batch was too large for any clock) needs faster gaps afterwards, not just
gaps within the bound. The rule without that history (the same batch, nobody behind) takes the lowest clock
whose next iteration fits; with it, the clock that brings back every request the max clock still can."""

from __future__ import annotations

from ecofreq_helpers import SLO, controller

from voltana.core.types import BatchSnapshot, ClockDecision, Phase, ScheduledRequest

CLOCKS = (1065, 1245, 1410)
KV_TOKENS = 1500
OUTPUT = 100
"""Tokens each request generates: the instance measures it from the requests that leave."""
BATCH = 140
WARMUP_S = 20.0


def scenario(behind_step_s: float | None) -> tuple[ClockDecision, object, float]:
    """A decode instance runs a steady population of ``BATCH`` requests (``OUTPUT`` tokens each, every age)
    with iterations of its predicted ITL at the lowest clock; with ``behind_step_s`` the last 40 iterations
    before the decision took that long instead (an overload just past). Returns the decision, the controller
    and the bound (s)."""
    ctl = controller(Phase.DECODE, clocks=CLOCKS, options={"decode_window_s": 10.0})
    bound_s = SLO.itl_s * 0.9
    live = {f"s{i}": 1 + (i * OUTPUT) // BATCH for i in range(BATCH)}
    arrived, now_s = 0, 0.0
    decision = None
    step_s = ctl.predictor.values(float(BATCH), float(BATCH * KV_TOKENS))[0]
    iterations = 0
    slow_from = int(WARMUP_S / step_s) - 40
    while now_s < WARMUP_S:
        scheduled = [ScheduledRequest(rid, 1, KV_TOKENS, 0.0) for rid in live]
        decision = ctl.decide(BatchSnapshot.build(Phase.DECODE, scheduled, now_s=now_s))
        iterations += 1
        slow = behind_step_s is not None and iterations >= slow_from
        now_s += behind_step_s if slow else step_s
        departed = [rid for rid, left in live.items() if left <= 1]
        live = {rid: left - 1 for rid, left in live.items() if left > 1}
        for _ in departed:  # a steady population: one arrives for each that leaves
            live[f"a{arrived}"] = OUTPUT
            arrived += 1
    assert decision is not None
    return decision, ctl, bound_s


def test_without_history_the_lowest_clock_whose_next_iteration_fits() -> None:
    decision, _, bound_s = scenario(None)
    assert decision.clock_mhz == CLOCKS[0]
    assert decision.predicted_latency_s is not None and decision.predicted_latency_s <= bound_s


def test_requests_behind_the_bound_get_a_faster_clock_that_brings_them_back() -> None:
    fresh, _, bound_s = scenario(None)
    # 40 iterations at 1.6x the bound: the youngest requests are behind, by less than the rest of their
    # output at the max clock's pace can make up.
    behind, ctl, _ = scenario(1.6 * bound_s)
    assert behind.clock_mhz > fresh.clock_mhz
    demand = ctl.ctx.state["ecofreq"].demand
    assert demand is not None
    itl = behind.predicted_latency_s
    assert itl is not None
    # The property: every request behind the bound that the max clock can bring back within it over its
    # expected remaining tokens is brought back at the chosen clock's pace.
    top_itl = ctl.predictor.values(float(BATCH), float(BATCH * KV_TOKENS))[-1]
    now_s = demand.last_update_s
    brought_back = 0
    for rid in demand.running:
        so_far = demand.itl_so_far(rid, now_s)
        assert so_far is not None
        elapsed_s, tokens = so_far
        remaining = max(demand.output_tokens - tokens, demand.short_decode_tokens)
        if elapsed_s <= bound_s * tokens:
            continue
        if (elapsed_s + top_itl * remaining) / (tokens + remaining) <= bound_s:
            brought_back += 1
            assert (elapsed_s + itl * remaining) / (tokens + remaining) <= bound_s + 1e-9
    assert brought_back > 0


def test_requests_too_far_behind_for_any_clock_do_not_hold_a_fast_clock() -> None:
    """Behind by more than even the max clock can make up (every iteration for 40 steps at 20x the bound):
    no clock saves them, so the rule spends nothing on them."""
    lost, _, _ = scenario(20 * SLO.itl_s)
    assert lost.clock_mhz == CLOCKS[0]
