"""``energy-ttft`` prefill routing: least added energy among the instances meeting the TTFT at the lowest
clock (their waiting prompts' included), else the earliest predicted completion (``predicted-ttft``)."""

from __future__ import annotations

import pytest

from tests.support.policies import choose_instance
from tests.unit.routing.test_routing import LinearPrefill, prefill
from voltana.core.contexts import RouteContext
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.types import BatchSnapshot, Phase, RouteRequest, Slo
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.routing import predicted_prefill_j, prefill_marginal_j

SLO = Slo(0.8, 0.05)
CLOCKS = (1005, 1410)


class LinearEnergy:
    """energy = 0.1 J/token + 5 J per iteration (overhead and the weight stream: what a batch shares)."""

    def predict_energy_j(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        return 0.1 * snapshot.num_new_tokens + 5.0


@pytest.fixture
def hook():  # type: ignore[no-untyped-def]
    return make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook


def choose(hook, candidates, tokens=100, energy=True, margin=0.0):  # type: ignore[no-untyped-def]
    ctx = RouteContext(
        "energy-ttft",
        Phase.PREFILL,
        SLO,
        predictor=LinearPrefill(),
        power_model=LinearEnergy() if energy else None,
        options={"allowed_clocks_mhz": CLOCKS, "max_clock_mhz": CLOCKS[-1], "safety_margin": margin},
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


def test_without_an_energy_model_busy_comes_first_then_the_forming_batch(hook) -> None:  # type: ignore[no-untyped-def]
    idle = prefill(0)
    small = prefill(1, num_running=1, pending_prompt_tokens=500)
    large = prefill(2, num_running=1, pending_prompt_tokens=1500)
    assert choose(hook, [idle, small, large], energy=False) == "p2"


def test_without_clocks_it_is_predicted_ttft(hook) -> None:  # type: ignore[no-untyped-def]
    ctx = RouteContext("energy-ttft", Phase.PREFILL, SLO, predictor=LinearPrefill(), options={})
    busy = prefill(0, num_running=1, pending_prompt_tokens=2000)
    chosen = choose_instance(hook, request=RouteRequest("r", 100), candidates=[busy, prefill(1)], ctx=ctx)
    assert chosen == "p1"
