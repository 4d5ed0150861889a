"""``energy-ttft`` prefill routing: least added energy among the instances meeting the TTFT at the lowest
clock (their waiting prompts' included), else the earliest predicted completion (``predicted-ttft``)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.support.policies import choose_instance
from tests.unit.routing.test_routing import LinearPrefill, prefill
from voltana.core.contexts import RouteContext
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.types import BatchSnapshot, Phase, RouteRequest, Slo
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.routing import (
    MIN_JOIN_SAVING,
    predicted_prefill_j,
    predicted_prefill_s,
    prefill_marginal_j,
)

SLO = Slo(0.8, 0.05)
CLOCKS = (1005, 1410)


class LinearEnergy:
    """energy = 0.1 J/token + 5 J per iteration (overhead and the weight stream: what a batch shares)."""

    def predict_energy_j(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        return 0.1 * snapshot.num_new_tokens + 5.0


@pytest.fixture
def hook():  # type: ignore[no-untyped-def]
    return make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook


def choose(hook, candidates, tokens=100, energy=True, margin=0.0, options=None, model=None):  # type: ignore[no-untyped-def]
    ctx = RouteContext(
        "energy-ttft",
        Phase.PREFILL,
        SLO,
        predictor=LinearPrefill(),
        power_model=(model or LinearEnergy()) if energy else None,
        options={
            "allowed_clocks_mhz": CLOCKS,
            "max_clock_mhz": CLOCKS[-1],
            "safety_margin": margin,
            **(options or {}),
        },
    )
    return choose_instance(hook, request=RouteRequest("r", tokens), candidates=candidates, ctx=ctx)


def test_prefill_energy_is_per_chunk_above_idle() -> None:
    # 20000 tokens at budget 8192: three chunks, 5 J each plus 0.1 J/token, less 10 W x the predicted time.
    joules = predicted_prefill_j(LinearEnergy(), LinearPrefill(), 20000, 8192, 1000, idle_w=10.0)
    assert joules == pytest.approx(0.1 * 20000 + 3 * 5.0 - 10.0 * (1e-4 * 20000 + 3 * 0.002))


def test_a_prompt_joins_a_busy_instance_rather_than_waking_an_idle_one(hook) -> None:  # type: ignore[no-untyped-def]
    busy = prefill(0, num_running=1, pending_prompt_tokens=2000)
    idle = prefill(1)
    # predicted-ttft would pick the idle instance (it finishes the prompt first); both meet the TTFT.
    assert choose(hook, [busy, idle]) == "p0"
    assert choose(hook, [idle, busy]) == "p0"


def test_marginal_energy_counts_the_shared_iteration_cost_once() -> None:
    ctx = RouteContext(
        "energy-ttft", Phase.PREFILL, SLO, predictor=LinearPrefill(), power_model=LinearEnergy()
    )
    request = RouteRequest("r", 100)
    busy = prefill(0, num_running=1, pending_prompt_tokens=2000)
    assert prefill_marginal_j(busy, request, ctx, 1005) == pytest.approx(0.1 * 100)
    assert prefill_marginal_j(prefill(1), request, ctx, 1005) == pytest.approx(0.1 * 100 + 5.0)


def test_an_instance_that_misses_the_ttft_at_the_lowest_clock_is_not_joined(hook) -> None:  # type: ignore[no-untyped-def]
    # At 1005 MHz: the 3700 pending tokens take 1e-4 * 3700 * 1000 / 1005 + 2 ms = 0.370 s (how long a prompt
    # waiting there may have waited), then 3800 tokens with this prompt 0.380 s: 0.750 s in all, within the
    # 0.8 s TTFT at margin 0, beyond 0.8 x 0.9 = 0.72 s at margin 0.1 (at 1410 MHz it would fit: 0.54 s).
    crowded = prefill(0, num_running=1, pending_prompt_tokens=3700)
    idle = prefill(1)
    assert choose(hook, [crowded, idle], margin=0.0) == "p0"
    assert choose(hook, [crowded, idle], margin=0.1) == "p1"


def test_the_wait_of_the_prompts_already_there_counts(hook) -> None:  # type: ignore[no-untyped-def]
    # 5000 pending + 100: this prompt alone would finish in 0.51 s at 1005 MHz, but a prompt waiting there
    # may have waited up to 0.50 s already and finishes with it: 1.0 s > 0.8 s, so the idle instance.
    crowded = prefill(0, num_running=1, pending_prompt_tokens=5000)
    assert choose(hook, [crowded, prefill(1)]) == "p1"


def test_when_no_instance_meets_the_ttft_the_earliest_completion_wins(hook) -> None:  # type: ignore[no-untyped-def]
    a = prefill(0, num_running=1, pending_prompt_tokens=30000)
    b = prefill(1, num_running=1, pending_prompt_tokens=20000)
    assert choose(hook, [a, b]) == "p1"


def test_without_an_energy_model_busy_comes_first_then_the_earliest_completion(hook) -> None:  # type: ignore[no-untyped-def]
    # Equal added energy among the busy ones: the one that finishes the prompt first, not the fuller batch
    # (piling prompts on one instance cost TTFT attainment on the Azure trace).
    idle = prefill(0)
    small = prefill(1, num_running=1, pending_prompt_tokens=500)
    large = prefill(2, num_running=1, pending_prompt_tokens=1500)
    assert choose(hook, [idle, large, small], energy=False) == "p1"


def test_without_clocks_it_is_predicted_ttft(hook) -> None:  # type: ignore[no-untyped-def]
    ctx = RouteContext("energy-ttft", Phase.PREFILL, SLO, predictor=LinearPrefill(), options={})
    busy = prefill(0, num_running=1, pending_prompt_tokens=2000)
    chosen = choose_instance(hook, request=RouteRequest("r", 100), candidates=[busy, prefill(1)], ctx=ctx)
    assert chosen == "p1"


class ClockedEnergy:
    """LinearEnergy scaled by (clock / 1005)^2: a higher clock costs more per token (EcoPred's shape)."""

    def predict_energy_j(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        return (0.1 * snapshot.num_new_tokens + 5.0) * (clock_mhz / 1005) ** 2


def old_rule_fits(pending: int, tokens: int, budget_tokens: int, low: int, budget_s: float) -> bool:
    """The previous energy-ttft bound: L(P) + L(P + x) at the lowest clock, at any P."""
    model = LinearPrefill()
    return (
        predicted_prefill_s(model, pending, budget_tokens, low)
        + predicted_prefill_s(model, pending + tokens, budget_tokens, low)
        <= budget_s
    )


def test_a_busy_instance_is_joined_only_where_the_prompt_rides_the_forming_batch(hook) -> None:  # type: ignore[no-untyped-def]
    # Token budget 2048: 1900 pending + 100 ride the next iteration (joined); 2000 + 100 spill into a second
    # one, where the wait of the prompts already there is not bounded by the running iteration (it was full),
    # so the idle instance. The previous rule joined both: L(2000) + L(2100) = 0.42 s is within 0.72 s.
    idle = prefill(1)
    rides = prefill(0, num_running=1, pending_prompt_tokens=1900)
    spills = prefill(0, num_running=1, pending_prompt_tokens=2000)
    options = {"prefill_token_budget": 2048}
    assert choose(hook, [rides, idle], margin=0.1, options=options) == "p0"
    assert choose(hook, [spills, idle], margin=0.1, options=options) == "p1"
    assert old_rule_fits(2000, 100, 2048, 1005, 0.72)


def test_a_compute_bound_prompt_does_not_wait_behind_a_busy_instance(hook) -> None:  # type: ignore[no-untyped-def]
    # 100 tokens: alone 15 J, joined 10 J (33% saved): joins. 4000 tokens: alone 405 J, joined 400 J (1.2%
    # saved, below MIN_JOIN_SAVING): runs at once on the idle instance. Both meet the TTFT on the busy one
    # (0.02 + 0.42 s at 1005 MHz), so the previous rule joined both.
    busy = prefill(0, num_running=1, pending_prompt_tokens=200)
    assert MIN_JOIN_SAVING == 0.05
    assert choose(hook, [busy, prefill(1)], tokens=100) == "p0"
    assert choose(hook, [busy, prefill(1)], tokens=4000) == "p1"
    assert old_rule_fits(200, 4000, 8192, 1005, 0.8)


def test_the_join_is_priced_at_the_clock_the_busy_instance_runs(hook) -> None:  # type: ignore[no-untyped-def]
    # 100 tokens joined at 1005 MHz: 10 J against 15 J alone; at 1410 MHz (EcoFreq raised it for the prompts
    # there) 10 x 1.97 = 19.7 J, more than alone at 1005 MHz: the idle instance.
    slow = prefill(0, num_running=1, pending_prompt_tokens=200, sm_clock_mhz=1005)
    fast = prefill(0, num_running=1, pending_prompt_tokens=200, sm_clock_mhz=1410)
    assert choose(hook, [slow, prefill(1)], model=ClockedEnergy()) == "p0"
    assert choose(hook, [fast, prefill(1)], model=ClockedEnergy()) == "p1"


def test_min_join_saving_is_an_option(hook) -> None:  # type: ignore[no-untyped-def]
    busy = prefill(0, num_running=1, pending_prompt_tokens=200)
    assert choose(hook, [busy, prefill(1)], tokens=4000, options={"min_join_saving": 0.0}) == "p0"
    assert choose(hook, [busy, prefill(1)], tokens=100, options={"min_join_saving": 0.5}) == "p1"


HOOK = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook


@settings(max_examples=200, deadline=None)
@given(
    running=st.integers(1, 8192),
    waiting=st.integers(0, 8192),
    tokens=st.integers(1, 4000),
    clocks=st.tuples(st.sampled_from(CLOCKS), st.sampled_from(CLOCKS)),
    elapsed=st.floats(0.0, 1.0),
    margin=st.sampled_from((0.0, 0.1, 0.3)),
)
def test_a_joined_prompt_and_those_waiting_there_meet_the_ttft(
    running: int,
    waiting: int,
    tokens: int,
    clocks: tuple[int, int],
    elapsed: float,
    margin: float,
) -> None:
    # Whenever energy-ttft sends a prompt to a busy instance (running iteration of `running` tokens at any
    # allowed clock, `elapsed` of it done; `waiting` tokens arrived during it), the running iteration's rest
    # plus the next one (waiting + this prompt, at any allowed clock) is within the TTFT budget: the TTFT of
    # this prompt and, since they arrived after the running iteration started, of the prompts waiting there.
    # The other instance is idle and a prompt of at most 4000 tokens fits there alone at the lowest clock
    # (0.40 s <= 0.56 s), so the rule itself chose, not its predicted-ttft fallback.
    busy = prefill(0, num_running=1, num_waiting=int(waiting > 0), pending_prompt_tokens=running + waiting)
    chosen = choose(HOOK, [busy, prefill(1)], tokens=tokens, margin=margin)
    assume(chosen == "p0")
    model = LinearPrefill()
    run_s = predicted_prefill_s(model, running, 8192, clocks[0])
    next_s = predicted_prefill_s(model, waiting + tokens, 8192, clocks[1])
    assert waiting + tokens <= 8192
    assert (1.0 - elapsed) * run_s + next_s <= SLO.ttft_s * (1.0 - margin) + 1e-9
