"""Capacity-aware EcoRoute: never a wait for admission on one instance while another admits at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.policies import choose_instance
from voltana.core.contexts import RouteContext
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.types import BatchSnapshot, InstanceState, Phase, RouteRequest, Slo
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.ecoroute import (
    DEFAULT_HEADROOM,
    admits_now,
    crosses_boundary,
    drain_key,
    has_headroom,
    requests_ahead,
)

CAPTURES = (1, 2, 4, 8, 16, 24, 32, 64, 128, 256)
CLOCKS = (1005, 1200, 1410)
HOOK = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook


class Linear:
    """ITL = (8 ms + 0.1 ms per request + 1e-8 s per KV token) x 1410/clock; energy = 200 W x ITL."""

    def predict_latency_s(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        base = 0.008 + 1e-4 * snapshot.batch_size + 1e-8 * snapshot.num_context_tokens
        return base * 1410 / clock_mhz

    def predict_energy_j(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        return (60 + 150 * (clock_mhz / 1410) ** 3) * self.predict_latency_s(snapshot, clock_mhz)


@st.composite
def decode_instances(draw: st.DrawFn) -> list[InstanceState]:
    count = draw(st.integers(2, 4))
    states = []
    for i in range(count):
        cap = draw(st.sampled_from([0, 8, 64, 256]))
        running = draw(st.integers(0, cap if cap else 300))
        waiting = draw(st.integers(0, 20))
        capacity = draw(st.sampled_from([0, 20_000, 200_000]))
        committed = draw(st.integers(0, capacity + 5_000)) if capacity else draw(st.integers(0, 50_000))
        states.append(
            InstanceState(
                f"d{i}",
                Phase.DECODE,
                num_running=running,
                num_waiting=waiting,
                num_admission_waiting=draw(st.integers(0, waiting)),
                kv_tokens=min(committed, draw(st.integers(0, 100_000))),
                kv_capacity_tokens=capacity,
                kv_committed_tokens=committed,
                max_running=cap,
                sm_clock_mhz=draw(st.sampled_from(CLOCKS)),
                capture_sizes=CAPTURES,
            )
        )
    return states


@settings(max_examples=300, deadline=None)
@given(
    candidates=decode_instances(),
    prompt=st.integers(1, 4000),
    output=st.integers(0, 2000),
    with_models=st.booleans(),
    fill=st.sampled_from(["pack", "spread"]),
)
def test_ecoroute_never_makes_a_request_wait_while_another_instance_admits_it(
    candidates: list[InstanceState], prompt: int, output: int, with_models: bool, fill: str
) -> None:
    request = RouteRequest("r", prompt, output)
    model = Linear() if with_models else None
    options = {"allowed_clocks_mhz": CLOCKS, "ecoroute_fill": fill, "idle_power_w": 60.0}
    ctx = RouteContext("ecoroute", Phase.DECODE, Slo(0.8, 0.05), predictor=model, options=options)
    ctx.power_model = model
    chosen = choose_instance(HOOK, request=request, candidates=candidates, ctx=ctx)
    by_id = {c.instance_id: c for c in candidates}
    admitting = [c for c in candidates if admits_now(c, request)]
    if admitting:
        assert admits_now(by_id[chosen], request)
    else:  # everyone makes it wait: the fewest requests ahead of it
        assert requests_ahead(by_id[chosen]) == min(requests_ahead(c) for c in candidates)


def test_a_full_instance_is_skipped_even_when_packing_would_pick_it() -> None:
    full = InstanceState(
        "full", Phase.DECODE, num_running=256, num_waiting=0, max_running=256, capture_sizes=CAPTURES
    )
    empty = InstanceState("empty", Phase.DECODE, max_running=256, capture_sizes=CAPTURES)
    ctx = RouteContext("ecoroute", Phase.DECODE, Slo(0.8, 0.05), options={"allowed_clocks_mhz": CLOCKS})
    request = RouteRequest("r", 100, 300)
    assert choose_instance(HOOK, request=request, candidates=[full, empty], ctx=ctx) == "empty"
    # Below its headroom the busier instance still wins (packing), as before.
    busy = InstanceState("busy", Phase.DECODE, num_running=40, max_running=256, capture_sizes=CAPTURES)
    assert choose_instance(HOOK, request=request, candidates=[busy, empty], ctx=ctx) == "busy"


def test_past_headroom_the_request_joins_the_instance_that_drains_fastest_not_the_fewest_requests() -> None:
    """Every instance is past its headroom (an overload): with no padding step either way, EcoRoute balances
    like join-shortest-queue by expected drain time, the predicted ITL with the request at the max clock,
    which counts the KV each batch reads; the fewest requests (the rule before) would pick the instance whose
    long contexts make every iteration slower."""
    light = InstanceState(
        "light", Phase.DECODE, num_running=200, kv_tokens=200 * 200, max_running=256, capture_sizes=CAPTURES
    )
    heavy = InstanceState(
        "heavy", Phase.DECODE, num_running=190, kv_tokens=190 * 3000, max_running=256, capture_sizes=CAPTURES
    )
    model = Linear()
    ctx = RouteContext(
        "ecoroute", Phase.DECODE, Slo(0.8, 0.05), predictor=model, options={"allowed_clocks_mhz": CLOCKS}
    )
    request = RouteRequest("r", 100, 300)
    assert not has_headroom(light, DEFAULT_HEADROOM) and not has_headroom(heavy, DEFAULT_HEADROOM)
    assert heavy.num_running < light.num_running
    assert choose_instance(HOOK, request=request, candidates=[light, heavy], ctx=ctx) == "light"
    # Without a latency model it falls back to the fewest requests.
    bare = RouteContext("ecoroute", Phase.DECODE, Slo(0.8, 0.05), options={"allowed_clocks_mhz": CLOCKS})
    assert choose_instance(HOOK, request=request, candidates=[light, heavy], ctx=bare) == "heavy"


@settings(max_examples=200, deadline=None)
@given(candidates=decode_instances(), prompt=st.integers(1, 4000), output=st.integers(0, 2000))
def test_past_headroom_ecoroute_picks_the_least_predicted_itl_among_the_admitting(
    candidates: list[InstanceState], prompt: int, output: int
) -> None:
    request = RouteRequest("r", prompt, output)
    model = Linear()
    ctx = RouteContext(
        "ecoroute", Phase.DECODE, Slo(0.8, 0.05), predictor=model, options={"allowed_clocks_mhz": CLOCKS}
    )
    admitting = [c for c in candidates if admits_now(c, request)]
    if not admitting or any(has_headroom(c, DEFAULT_HEADROOM) for c in admitting):
        return  # the other branches: covered above
    chosen = choose_instance(HOOK, request=request, candidates=candidates, ctx=ctx)
    # Past headroom: no padding step if any instance avoids one, then the least predicted ITL.
    flat = [c for c in admitting if not crosses_boundary(c.num_running + c.num_waiting, c.capture_sizes)]
    pool = flat or admitting
    keys = {c.instance_id: drain_key(c, request, ctx) for c in pool}
    assert chosen in keys
    assert keys[chosen] == min(keys.values())


def test_past_headroom_a_tile_boundary_outweighs_a_shorter_queue() -> None:
    """One more request on an instance at exactly 256 requests (the largest capture size here) pads its batch
    to 384 rows: EcoRoute balances among the instances that cross no boundary first."""
    at_boundary = InstanceState(
        "edge", Phase.DECODE, num_running=256, max_running=400, capture_sizes=CAPTURES
    )
    busier = InstanceState("busier", Phase.DECODE, num_running=300, max_running=400, capture_sizes=CAPTURES)
    model = Linear()
    ctx = RouteContext(
        "ecoroute", Phase.DECODE, Slo(0.8, 0.05), predictor=model, options={"allowed_clocks_mhz": CLOCKS}
    )
    request = RouteRequest("r", 100, 300)
    assert drain_key(at_boundary, request, ctx) < drain_key(busier, request, ctx)
    assert crosses_boundary(256, CAPTURES) and not crosses_boundary(300, CAPTURES)
    assert choose_instance(HOOK, request=request, candidates=[at_boundary, busier], ctx=ctx) == "busier"
