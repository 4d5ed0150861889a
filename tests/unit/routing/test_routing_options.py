"""The routing policies' knobs in ``policy.options`` are checked once at start: a bad value is one line
(``voltana simulate`` exits 2 with it; the router refuses to build), never a traceback from a routing call."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.support.cli import simulate_in_process, simulate_with_config
from voltana.core.config import ConfigError, PolicyConfig, VoltanaConfig, load_config
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
        ({"ecoroute_energy": "sometimes"}, "policy.options.ecoroute_energy must be true or false, "
                                           "got 'sometimes'"),
        ({"ecoroute_energy": 1}, "policy.options.ecoroute_energy must be true or false, got 1"),
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


@pytest.mark.parametrize("given", [0.3, "0.3", 0.0])
def test_the_routes_take_policy_safety_margin_as_the_clocks_do(given: object) -> None:
    """``policy.safety_margin`` is the setting: the controllers pass it over ``policy.options``, and the
    routes took ``policy.options.safety_margin`` over it instead."""
    policy = PolicyConfig(safety_margin=0.2, options={"safety_margin": given})
    assert route_options(policy)["safety_margin"] == 0.2


@pytest.mark.parametrize(
    ("given", "line"),
    [
        ("abc", "policy.options.safety_margin must be a number, got 'abc'"),
        (1.5, "policy.options.safety_margin must be in [0, 1), got 1.5"),
        (True, "policy.options.safety_margin must be a number, got True"),
    ],
)
def test_a_bad_options_safety_margin_is_one_line_for_the_routes(given: object, line: str) -> None:
    """EcoFreq checks ``policy.options.safety_margin``; with another clock policy it reached the routes'
    ``float()`` unchecked (a traceback at the first decode request)."""
    with pytest.raises(ConfigError) as raised:
        route_options(PolicyConfig(options={"safety_margin": given}))
    assert str(raised.value) == line


def test_simulate_with_a_bad_options_safety_margin_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__SAFETY_MARGIN", "abc")
    code, _, err = simulate_in_process(
        ["--duration", "5", "--rates", "4", "--policies", "static-max+ecoroute"], monkeypatch, capsys
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["error: policy.options.safety_margin must be a number, got 'abc'"]


@pytest.mark.parametrize(("key", "setting"), [("allowed_clocks_mhz", "clocks.allowed_mhz"),
                                            ("max_clock_mhz", "clocks.max_mhz")])  # fmt: skip
def test_the_clocks_the_routes_predict_with_are_not_options(key: str, setting: str) -> None:
    """The simulator put ``policy.options`` over the clocks it gives the routes: ``allowed_clocks_mhz =
    "abc"`` was a traceback from the first routing decision, a list of clocks replaced the controllers'."""
    with pytest.raises(ConfigError) as raised:
        route_options(PolicyConfig(options={key: "abc"}))
    assert str(raised.value) == (
        f"policy.options.{key} is not an option: the routes get the clock controllers' clocks "
        f"(set {setting}), got 'abc'"
    )


def test_simulate_with_clocks_in_policy_options_exits_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = simulate_with_config(
        tmp_path, monkeypatch, capsys, '[policy]\noptions = { allowed_clocks_mhz = "abc" }\n', "ecofreq"
    )
    assert code == 2
    assert lines == ["error: policy.options.allowed_clocks_mhz is not an option: the routes get the clock "
                     "controllers' clocks (set clocks.allowed_mhz), got 'abc'"]  # fmt: skip


def test_the_router_gives_the_routes_its_predictors_clocks() -> None:
    """``route_context`` (the HTTP router, the Ray Serve request routers) gives the routes the predictors'
    clocks over any in the options (it set them only where the options had none)."""
    from voltana.core.types import Phase, Slo
    from voltana.router.choice import route_context
    from voltana.router.predictors import route_predictors

    seeded = route_predictors(VoltanaConfig(hardware={"vendor": "simulated"}, clocks={"min_mhz": 1005}))
    assert seeded is not None
    ctx = route_context("ecoroute", Phase.DECODE, Slo(0.8, 0.05), random.Random(0),
                        {"allowed_clocks_mhz": (1, 2)}, seeded)  # fmt: skip
    assert ctx.options["allowed_clocks_mhz"] == seeded.clocks_mhz


def test_the_routes_get_knobs_from_the_environment_as_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``VOLTANA_POLICY__OPTIONS__*`` variable arrives as a string: ``"5.0"`` passed the check as 5 but
    reached the routes as ``"5.0"``, whose ``int()`` raised in the first routing decision. Other policies'
    keys are left as they came."""
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__ECOROUTE_PACK_LIMIT", "5.0")
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__PREFILL_TOKEN_BUDGET", "4096.0")
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__MIN_JOIN_SAVING", "0.1")
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__STATIC_CLOCK_MHZ", "1200")
    options = route_options(load_config().config.policy)
    assert options == {"safety_margin": 0.1, "ecoroute_pack_limit": 5, "prefill_token_budget": 4096,
                       "min_join_saving": 0.1, "static_clock_mhz": "1200"}  # fmt: skip
    assert isinstance(options["ecoroute_pack_limit"], int) and isinstance(options["min_join_saving"], float)


def test_simulate_runs_with_routing_knobs_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__ECOROUTE_PACK_LIMIT", "5.0")
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__PREFILL_TOKEN_BUDGET", "4096.0")
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__ECOROUTE_ENERGY", "false")
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__PLAN_FOR_NEWCOMER", "False")
    code, _, err = simulate_in_process(
        ["--duration", "5", "--rates", "3", "--policies", "ecofreq+ecoroute", "--json"], monkeypatch, capsys
    )
    assert not code, err


@pytest.mark.parametrize(
    ("text", "expected"), [("false", False), ("False", False), ("0", False), ("TRUE", True)]
)
def test_ecoroute_energy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: bool
) -> None:
    """``VOLTANA_POLICY__OPTIONS__ECOROUTE_ENERGY=false`` arrives as the string 'false': it was refused
    (``must be true or false, got 'false'``). The routes get the bool, not the (truthy) text."""
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__ECOROUTE_ENERGY", text)
    assert route_options(load_config().config.policy)["ecoroute_energy"] is expected


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
