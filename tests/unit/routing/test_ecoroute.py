"""EcoRoute (ours and the paper's) through the real hook: boundaries, clock awareness, packing, KV fit."""

from __future__ import annotations

import pytest

from tests.support.policies import choose_instance
from voltana.core.contexts import RouteContext
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.types import BatchSnapshot, InstanceState, Phase, RouteRequest, Slo
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.ecoroute import (
    crosses_boundary,
    decode_snapshot,
    marginal_energy_j,
    needed_clock_mhz,
    padded_batch_size,
)

CAPTURES = (1, 2, 4, 8, 16, 24, 32)
CLOCKS = (1005, 1200, 1410)
SLO = Slo(0.8, 0.05)


class LinearDecode:
    """ITL = 0.4 ms per request + 1e-7 s per KV token, scaled by 1410/clock: a LatencyModel stand-in."""

    def predict_latency_s(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        base = 4e-4 * snapshot.batch_size + 1e-7 * snapshot.num_context_tokens
        return base * 1410 / clock_mhz


class WeightsPlusBatch(LinearDecode):
    """ITL = (8 ms weight streaming + 0.4 ms per request + 1e-7 s per KV token) x 1410/clock."""

    def predict_latency_s(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        return 0.008 * 1410 / clock_mhz + super().predict_latency_s(snapshot, clock_mhz)


class PowerTimesLatency:
    """Energy = (60 W + 150 W x (clock/1410)^3) x predicted latency (dynamic power ~ f V^2): a stand-in."""

    def __init__(self, latency: LinearDecode) -> None:
        self.latency = latency

    def predict_energy_j(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        return (60 + 150 * (clock_mhz / 1410) ** 3) * self.latency.predict_latency_s(snapshot, clock_mhz)


@pytest.fixture
def hook():  # type: ignore[no-untyped-def]
    return make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook


def decode(i: int, **kw: object) -> InstanceState:
    kw.setdefault("capture_sizes", CAPTURES)
    return InstanceState(f"d{i}", Phase.DECODE, **kw)  # type: ignore[arg-type]


def route(hook, policy, candidates, request=None, **options):  # type: ignore[no-untyped-def]
    ctx = RouteContext(policy, Phase.DECODE, SLO, predictor=options.pop("predictor", None), options=options)
    return choose_instance(hook, request=request or RouteRequest("r", 500), candidates=candidates, ctx=ctx)


def test_padding_follows_capture_sizes_then_tiles() -> None:
    assert [padded_batch_size(n, CAPTURES) for n in (1, 3, 8, 9, 33, 129)] == [1, 4, 8, 16, 128, 256]
    assert crosses_boundary(8, CAPTURES) and not crosses_boundary(9, CAPTURES)
    assert crosses_boundary(0, CAPTURES)


def test_decode_snapshot_keeps_aggregates() -> None:
    snap = decode_snapshot(7, 1003)
    assert snap.batch_size == 7
    assert snap.num_context_tokens == sum(r.context_tokens for r in snap.requests) == 1003
    assert snap.num_new_tokens == 7


def test_needed_clock_is_lowest_feasible() -> None:
    model = LinearDecode()
    assert needed_clock_mhz(model, 10, 0, CLOCKS, 0.045) == 1005
    # 100 requests: 40 ms at 1410, 56 ms at 1005 -> needs 1410 for a 45 ms budget.
    assert needed_clock_mhz(model, 100, 0, CLOCKS, 0.045) == 1410
    assert needed_clock_mhz(model, 200, 0, CLOCKS, 0.045) == 1411  # none feasible


def test_ecoroute_avoids_crossing_a_capture_boundary(hook) -> None:  # type: ignore[no-untyped-def]
    # d0 has 8 requests (padded 8 -> 16 with one more), d1 has 10 (inside the 16 padding).
    chosen = route(hook, "ecoroute", [decode(0, num_running=8), decode(1, num_running=10)])
    assert chosen == "d1"


def test_ecoroute_packs_or_spreads_when_nothing_else_differs(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [decode(0, num_running=10), decode(1, num_running=12)]
    assert route(hook, "ecoroute", candidates) == "d1"
    assert route(hook, "ecoroute", candidates, ecoroute_fill="spread") == "d0"


def test_ecoroute_prefers_the_instance_that_stays_at_a_low_clock(hook) -> None:  # type: ignore[no-untyped-def]
    # d0 with 90 requests needs 1410 MHz after one more; d1 with 10 stays at 1005.
    candidates = [decode(0, num_running=90), decode(1, num_running=10)]
    chosen = route(hook, "ecoroute", candidates, predictor=LinearDecode(), allowed_clocks_mhz=CLOCKS)
    assert chosen == "d1"


def test_ecoroute_skips_instances_without_kv_room(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [
        decode(0, num_running=12, kv_tokens=9_800, kv_capacity_tokens=10_000),
        decode(1, num_running=3, kv_tokens=100, kv_capacity_tokens=10_000),
    ]
    assert route(hook, "ecoroute", candidates) == "d1"


def test_paper_below_one_tile_picks_lowest_clock_then_fewest(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [
        decode(0, num_running=3, sm_clock_mhz=1410),
        decode(1, num_running=50, sm_clock_mhz=1005),
        decode(2, num_running=20, sm_clock_mhz=1005),
    ]
    assert route(hook, "ecoroute-paper", candidates) == "d2"


def test_paper_above_one_tile_avoids_the_128_boundary(hook) -> None:  # type: ignore[no-untyped-def]
    candidates = [
        decode(0, num_running=128, sm_clock_mhz=1005),
        decode(1, num_running=140, sm_clock_mhz=1005),
    ]
    assert route(hook, "ecoroute-paper", candidates) == "d1"


def energy_ctx(**options: object) -> RouteContext:
    latency = WeightsPlusBatch()
    return RouteContext(
        "ecoroute",
        Phase.DECODE,
        SLO,
        predictor=latency,
        power_model=PowerTimesLatency(latency),
        options={"allowed_clocks_mhz": CLOCKS, "idle_power_w": 60.0, **options},
    )


def test_marginal_energy_packs_onto_a_busy_instance(hook) -> None:  # type: ignore[no-untyped-def]
    ctx = energy_ctx(ecoroute_fill="spread")  # the energy key decides before the fill rule
    busy, idle = decode(0, num_running=10, kv_tokens=5000), decode(1)
    request = RouteRequest("r", 500)
    joules_busy = marginal_energy_j(busy, request, ctx, (1005, 1005))
    joules_idle = marginal_energy_j(idle, request, ctx, (1005, 1005))
    assert joules_busy is not None and joules_idle is not None
    assert 0 < joules_busy < joules_idle  # the idle instance would pay the weight streaming again
    assert choose_instance(hook, request=request, candidates=[busy, idle], ctx=ctx) == "d0"


def test_a_clock_step_up_is_charged_to_the_whole_batch() -> None:
    ctx = energy_ctx()
    state = decode(0, num_running=40, kv_tokens=20000)
    request = RouteRequest("r", 500)
    same_clock = marginal_energy_j(state, request, ctx, (1005, 1005))
    step_up = marginal_energy_j(state, request, ctx, (1005, 1410))
    assert same_clock is not None and step_up is not None
    assert step_up > 5 * same_clock


def test_infeasible_instances_come_last(hook) -> None:  # type: ignore[no-untyped-def]
    # 100 requests: 8 + 40 + 0.5 ms > 45 ms even at 1410 MHz.
    ctx = energy_ctx()
    crowded, spare = decode(0, num_running=100, kv_tokens=5000), decode(1, num_running=30, kv_tokens=5000)
    assert choose_instance(hook, request=RouteRequest("r", 500), candidates=[crowded, spare], ctx=ctx) == "d1"


def test_energy_key_can_be_switched_off() -> None:
    assert (
        marginal_energy_j(decode(0), RouteRequest("r", 1), energy_ctx(ecoroute_energy=False), (1005, 1005))
        is None
    )
