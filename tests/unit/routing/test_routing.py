"""Routing baselines, registered as named policies with the real plugin manager and looked up by name."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.support.policies import choose_instance
from voltana.core.contexts import RouteContext
from voltana.core.errors import VoltanaError
from voltana.core.plugin_manager import make_plugin_manager, registered_policies
from voltana.core.policies import UnknownPolicyError
from voltana.core.types import BatchSnapshot, InstanceState, Phase, RouteRequest, Slo
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.routing import predicted_prefill_s

SLO = Slo(0.8, 0.05)


class LinearPrefill:
    """latency = 1e-4 s/token * tokens / (clock / 1000) + 2 ms: a stand-in with the LatencyModel shape."""

    def predict_latency_s(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        return 1e-4 * snapshot.num_new_tokens * 1000 / clock_mhz + 0.002


@pytest.fixture
def hook():  # type: ignore[no-untyped-def]
    return make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook


def prefill(i: int, **kw: object) -> InstanceState:
    return InstanceState(f"p{i}", Phase.PREFILL, **kw)  # type: ignore[arg-type]


def choose(hook, policy: str, candidates, request=None, **ctx_kw):  # type: ignore[no-untyped-def]
    ctx = RouteContext(policy, Phase.PREFILL, SLO, **ctx_kw)
    req = request or RouteRequest("r", 100)
    return choose_instance(hook, request=req, candidates=candidates, ctx=ctx), ctx


def test_policies_are_registered() -> None:
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    names = {p.name for p in registered_policies(pm) if p.kind == "route"}
    assert {"random", "round-robin", "least-loaded", "predicted-ttft", "ecoroute", "ecoroute-paper"} <= names


def test_unknown_policy_is_one_line_error_listing_the_registered_ones(hook) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownPolicyError) as caught:
        choose(hook, "no-such-policy", [prefill(0), prefill(1)])
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, VoltanaError)
    assert message.startswith("unknown routing policy 'no-such-policy'; registered: ")
    assert {"random", "round-robin", "least-loaded", "predicted-ttft", "ecoroute"} <= set(
        message.split("registered: ")[1].split(", ")
    )


def test_random_is_seeded_and_uses_every_healthy_instance(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [prefill(0), prefill(1), prefill(2, healthy=False)]
    ctx = RouteContext("random", Phase.PREFILL, SLO, random.Random(7))
    first = [
        choose_instance(hook, request=RouteRequest("r", 1), candidates=candidates, ctx=ctx)
        for _ in range(200)
    ]
    ctx2 = RouteContext("random", Phase.PREFILL, SLO, random.Random(7))
    second = [
        choose_instance(hook, request=RouteRequest("r", 1), candidates=candidates, ctx=ctx2)
        for _ in range(200)
    ]
    assert first == second
    counts = Counter(first)
    assert set(counts) == {"p0", "p1"}
    assert min(counts.values()) > 60


def test_round_robin_cycles_in_order(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [prefill(0), prefill(1), prefill(2)]
    ctx = RouteContext("round-robin", Phase.PREFILL, SLO)
    picks = [
        choose_instance(hook, request=RouteRequest("r", 1), candidates=candidates, ctx=ctx) for _ in range(6)
    ]
    assert picks == ["p0", "p1", "p2", "p0", "p1", "p2"]


def test_least_loaded_counts_running_and_waiting_then_pending_tokens(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [
        prefill(0, num_running=1, num_waiting=2),
        prefill(1, num_running=2, num_waiting=0, pending_prompt_tokens=900),
        prefill(2, num_running=0, num_waiting=2, pending_prompt_tokens=100),
    ]
    chosen, _ = choose(hook, "least-loaded", candidates)
    assert chosen == "p2"


def test_all_unhealthy_still_routes(hook) -> None:  # type: ignore[no-untyped-def]
    chosen, _ = choose(
        hook, "least-loaded", [prefill(0, healthy=False), prefill(1, healthy=False, num_waiting=3)]
    )
    assert chosen == "p0"


def test_predicted_ttft_chunks_by_token_budget() -> None:
    model = LinearPrefill()
    one_chunk = predicted_prefill_s(model, 8000, 8192, 1000)
    three_chunks = predicted_prefill_s(model, 20000, 8192, 1000)
    assert one_chunk == pytest.approx(1e-4 * 8000 + 0.002)
    assert three_chunks == pytest.approx(1e-4 * 20000 + 3 * 0.002)


def test_predicted_ttft_prefers_less_pending_work_and_uses_the_predictor(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [
        prefill(0, num_waiting=1, pending_prompt_tokens=6000),
        prefill(1, num_waiting=4, pending_prompt_tokens=2000),  # more requests, less work
    ]
    chosen, _ = choose(
        hook, "predicted-ttft", candidates, predictor=LinearPrefill(), options={"max_clock_mhz": 1410}
    )
    assert chosen == "p1"  # least-loaded would pick p0


def test_predicted_ttft_per_instance_predictors(hook) -> None:  # type: ignore[no-untyped-def]
    class Slow(LinearPrefill):
        def predict_latency_s(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
            return 10 * super().predict_latency_s(snapshot, clock_mhz)

    candidates = [prefill(0, pending_prompt_tokens=1000), prefill(1, pending_prompt_tokens=3000)]
    predictors = {"p0": Slow(), "p1": LinearPrefill()}
    chosen, _ = choose(
        hook, "predicted-ttft", candidates, predictor=predictors, options={"max_clock_mhz": 1410}
    )
    assert chosen == "p1"
