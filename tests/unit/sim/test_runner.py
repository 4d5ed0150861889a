"""Policy specs: parsing, default routes, and routing options for pinned clocks."""

from __future__ import annotations

import pytest

from voltana.core.types import Phase
from voltana.sim.runner import SimulationError, parse_policy, pinned_clock_options, static_spec

CLOCKS = (1005, 1065, 1410)


def test_parse_policy_defaults_and_overrides() -> None:
    ours = parse_policy("ecofreq+ecoroute")
    assert (ours.prefill_clock, ours.prefill_route, ours.decode_route) == (
        "ecofreq",
        "energy-ttft",
        "ecoroute",
    )
    paper = parse_policy("voltana-paper")
    assert (paper.prefill_route, paper.decode_route) == ("random", "ecoroute-paper")
    custom = parse_policy("static-max+least-loaded", prefill_route="least-loaded")
    assert (custom.prefill_route, custom.decode_route) == ("least-loaded", "least-loaded")
    with pytest.raises(SimulationError):
        parse_policy("+ecoroute")
    with pytest.raises(SimulationError, match="empty decode route after '\\+'"):
        parse_policy("static-max+")


def test_routers_see_pinned_clocks_for_static_policies() -> None:
    assert pinned_clock_options(parse_policy("static-min"), Phase.DECODE, CLOCKS) == {
        "allowed_clocks_mhz": (1005,),
        "max_clock_mhz": 1005,
    }
    oracle = static_spec(1065, 1410)
    assert pinned_clock_options(oracle, Phase.PREFILL, CLOCKS)["max_clock_mhz"] == 1065
    assert pinned_clock_options(parse_policy("ecofreq"), Phase.DECODE, CLOCKS) == {}
