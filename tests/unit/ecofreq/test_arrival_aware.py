"""Arrival-aware prefill and the energy-above-idle objective of EcoFreq, on the simulated A100."""

from __future__ import annotations

import math
import random

import pytest
from ecofreq_helpers import SLO, a100, controller, decode_snapshot, default_clocks, run_prefill

from voltana.core.arrivals import ArrivalRate
from voltana.core.types import BatchSnapshot, Phase, QueuedRequest, ScheduledRequest
from voltana.plugins.ecofreq import state_of


def prefill(
    now_s: float, batch: list[tuple[str, int, float]], waiting: list[tuple[str, int, float]]
) -> BatchSnapshot:
    return BatchSnapshot.build(
        Phase.PREFILL,
        [ScheduledRequest(rid, tokens, 0, arrival) for rid, tokens, arrival in batch],
        now_s=now_s,
        waiting=[QueuedRequest(rid, tokens, arrival) for rid, tokens, arrival in waiting],
    )


def test_the_arrival_rate_converges_on_a_poisson_stream() -> None:
    rng = random.Random(7)
    rate = ArrivalRate(window_s=2.0)
    arrivals: list[tuple[str, int, float]] = []
    next_arrival, tokens_total, estimates, seen = rng.expovariate(10.0), 0, [], 0
    for step in range(1, 4001):  # a busy instance deciding every 0.1 s for 400 s; ~10k prompt tokens/s
        now = step * 0.1
        while next_arrival <= now:
            tokens = rng.randint(500, 1500)
            tokens_total += tokens
            arrivals.append((f"r{len(arrivals)}", tokens, next_arrival))
            next_arrival += rng.expovariate(10.0)
        new, seen = arrivals[seen:], len(arrivals)
        estimate = rate.update(prefill(now, new[:1], new[1:]))  # the first newcomer runs, the rest queue
        if now > 10.0:  # after a few windows of warm-up
            estimates.append(estimate)
    true_rate = tokens_total / 400.0
    assert sum(estimates) / len(estimates) == pytest.approx(true_rate, rel=0.05)  # unbiased
    within = sum(abs(e / true_rate - 1.0) < 0.5 for e in estimates) / len(estimates)
    assert within > 0.9  # and one 2 s window (~20 arrivals) is rarely off by half


def test_a_request_counts_once_and_old_requests_not_at_all() -> None:
    rate = ArrivalRate(window_s=1.0)
    # A 9000-token prompt chunked: 8192 tokens computed now, the whole prompt still listed as waiting.
    assert rate.update(prefill(0.0, [("big", 8192, 0.0)], [("big", 9000, 0.0)])) == pytest.approx(9000.0)
    # The same request again (its last chunk) and nothing new: only decay.
    again = rate.update(prefill(1.0, [("big", 808, 0.0)], []))
    assert again == pytest.approx(9000.0 * math.exp(-1.0))
    # A newcomer straight into the batch counts its computed tokens.
    assert rate.update(prefill(1.0, [("new", 100, 0.5)], [])) == pytest.approx(again + 100.0)


def test_odd_times_never_raise() -> None:
    rate = ArrivalRate(window_s=1.0)
    for now in (5.0, math.nan, 3.0, math.inf, 6.0):
        value = rate.update(prefill(now, [("a", 10, math.nan)], [("b", 10, now)]))
        assert value >= 0.0
    with pytest.raises(ValueError, match="window_s"):
        ArrivalRate(0.0)


def poisson_prompts(tokens_per_s: float, seed: int, duration_s: float = 30.0) -> list[tuple[str, int, float]]:
    """Poisson arrivals of lognormal prompts (median ~900 tokens, mean ~1100) at about ``tokens_per_s``."""
    rng = random.Random(seed)
    prompts, now = [], 0.0
    while now < duration_s:
        now += rng.expovariate(tokens_per_s / 1100.0)
        prompts.append((f"r{len(prompts)}", int(min(8000, rng.lognormvariate(6.8, 0.8))), now))
    return prompts


@pytest.mark.parametrize("tokens_per_s", [9000.0, 12000.0])
def test_foreseeing_arrivals_near_saturation_meets_ttft_like_the_max_clock_with_less_energy(
    tokens_per_s: float,
) -> None:
    """62% and 83% of the max clock's full-budget throughput: the lowest clocks would fall behind."""
    prompts = poisson_prompts(tokens_per_s, seed=2)
    idle_w = a100().idle_power_w()
    aware = run_prefill(prompts, controller(Phase.PREFILL, options={"idle_power_w": idle_w}), 0.0, 8192)
    blind_options = {"idle_power_w": idle_w, "arrival_window_s": 0.0}
    blind = run_prefill(prompts, controller(Phase.PREFILL, options=blind_options), 0.0, 8192)
    static_max = run_prefill(prompts, default_clocks()[-1], 0.0, 8192)

    def attainment(run: object) -> float:
        ttft = run.ttft_s  # type: ignore[attr-defined]
        return sum(t <= SLO.ttft_s for t in ttft.values()) / len(prompts)

    print(
        f"\n{tokens_per_s:g} tok/s: attainment aware {attainment(aware):.3f} blind {attainment(blind):.3f} "
        f"max {attainment(static_max):.3f}; energy J {aware.energy_j:.0f} {blind.energy_j:.0f} "
        f"{static_max.energy_j:.0f}"
    )
    # Most of the arrival-blind policy's TTFT gap to the max clock closes, for less energy than the max clock.
    gap = attainment(static_max) - attainment(blind)
    assert gap > 0.04
    assert attainment(aware) - attainment(blind) >= 0.75 * gap
    assert aware.energy_j < static_max.energy_j


def test_an_instance_fed_beyond_what_any_clock_sustains_runs_at_the_max_clock() -> None:
    ctl = controller(Phase.PREFILL)
    max_clock = ctl.allowed_clocks_mhz[-1]
    # 20k prompt tokens/s for 3 s (the max clock computes ~14k/s): each decision sees 2000 new tokens.
    decisions = [ctl.decide(prefill(t / 10, [(f"r{t}", 2000, t / 10)], [])) for t in range(30)]
    assert state_of(ctl.ctx).token_rate_tps > 14_000
    assert {d.clock_mhz for d in decisions[-10:]} == {max_clock}
    # The same batches with arrival awareness off: the batch alone fits a lower clock.
    blind = controller(Phase.PREFILL, options={"arrival_window_s": 0.0})
    assert blind.decide(prefill(3.0, [("x", 2000, 3.0)], [])).clock_mhz < max_clock


def test_with_idle_power_known_the_least_energy_above_idle_wins() -> None:
    snapshot = decode_snapshot(64, 500)
    total = controller(Phase.DECODE, options={"idle_power_w": 0.0, "min_dwell_s": 0.0}).decide(snapshot)
    above = controller(Phase.DECODE, options={"idle_power_w": a100().idle_power_w()}).decide(snapshot)
    clocks = default_clocks()
    latency, energy = (
        controller(Phase.DECODE).predictor.values(64.0, 64 * 500.0),
        controller(Phase.DECODE).power_model.values(64.0, 64 * 500.0),
    )
    idle_w = a100().idle_power_w()
    feasible = [k for k in range(len(clocks)) if latency[k] <= SLO.itl_s * 0.9]
    assert clocks.index(total.clock_mhz) == min(feasible, key=energy.__getitem__)
    assert clocks.index(above.clock_mhz) == min(feasible, key=lambda k: energy[k] - idle_w * latency[k])
    # Energy vs clock is U-shaped in total but not above idle: knowing idle power picks a lower clock here.
    assert above.clock_mhz < total.clock_mhz
    assert above.predicted_energy_j is not None and total.predicted_energy_j is not None
    assert above.predicted_energy_j > total.predicted_energy_j  # more total joules in the iteration itself
