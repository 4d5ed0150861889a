"""The routing policies' knobs in ``policy.options`` are checked once at start: a bad value is one line
(``voltana simulate`` exits 2 with it; the router refuses to build), never a traceback from a routing call."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import simulate_with_config
from voltana.core.config import ConfigError, PolicyConfig, VoltanaConfig
from voltana.plugins import get_plugin_manager
from voltana.plugins.routing import MIN_JOIN_SAVING
from voltana.plugins.routing_options import RoutingOptions, route_options
from voltana.router.app import build_router_app


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ({"min_join_saving": "abc"}, "policy.options.min_join_saving must be a number, got 'abc'"),
        ({"min_join_saving": 1.0}, "policy.options.min_join_saving must be < 1, got 1.0"),
        ({"ecoroute_headroom": -0.1}, "policy.options.ecoroute_headroom must be >= 0, got -0.1"),
        ({"ecoroute_pack_limit": 0}, "policy.options.ecoroute_pack_limit must be >= 1, got 0"),
        ({"ecoroute_fill": "zigzag"}, "policy.options.ecoroute_fill must be one of 'pack' or 'spread', "
                                      "got 'zigzag'"),
        ({"ecoroute_energy": "yes"}, "policy.options.ecoroute_energy must be true or false, got 'yes'"),
        ({"idle_power_w": float("nan")}, "policy.options.idle_power_w must be a finite number, got nan"),
        ({"idle_power_w": True}, "policy.options.idle_power_w must be a number, got True"),
        ({"ecoroute_pack_limit": True}, "policy.options.ecoroute_pack_limit must be a whole number, "
                                        "got True"),
    ],
)  # fmt: skip
def test_a_bad_routing_knob_is_one_line(options: dict[str, object], line: str) -> None:
    with pytest.raises(ConfigError) as raised:
        route_options(PolicyConfig(options=options))
    assert str(raised.value) == line


def test_good_knobs_pass_through_with_the_safety_margin() -> None:
    policy = PolicyConfig(safety_margin=0.2, options={"min_join_saving": 0.1, "static_clock_mhz": 1200})
    assert route_options(policy) == {"safety_margin": 0.2, "min_join_saving": 0.1, "static_clock_mhz": 1200}
    assert RoutingOptions.from_mapping({}).min_join_saving == MIN_JOIN_SAVING


def test_simulate_with_a_bad_routing_knob_exits_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # EcoFreq's option check ignores the routing keys: the routing check must catch it
    code, lines = simulate_with_config(
        tmp_path, monkeypatch, capsys, '[policy]\noptions = { min_join_saving = "abc" }\n', "ecofreq+ecoroute"
    )
    assert code == 2
    assert lines == ["error: policy.options.min_join_saving must be a number, got 'abc'"]


def test_the_router_refuses_a_bad_routing_knob() -> None:
    config = VoltanaConfig(
        router={"prefill": ["http://127.0.0.1:9"], "decode": ["http://127.0.0.1:9"]},
        policy={"options": {"ecoroute_fill": "zigzag"}},
    )
    with pytest.raises(ConfigError, match=r"policy\.options\.ecoroute_fill must be one of"):
        build_router_app(config, get_plugin_manager().hook)
