"""``policy.options.static_clock_mhz``, the ``static`` clock policy's knob, is checked like the other
policies' knobs: one line and exit 2, never a failing policy that falls back to the max clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import simulate_in_process, simulate_with_config
from voltana.core.config import ConfigError, VoltanaConfig
from voltana.core.types import Phase
from voltana.hardware.simulated import performance_model
from voltana.plugins import get_plugin_manager
from voltana.plugins.ecofreq.factory import build_controller
from voltana.plugins.static_clock import StaticClockOptions
from voltana.sim.runner import parse_policy, pinned_clock_options

CLOCKS = (1005, 1200, 1410)


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (True, "policy.options.static_clock_mhz must be a whole number, got True"),
        ("abc", "policy.options.static_clock_mhz must be a whole number, got 'abc'"),
        (1200.5, "policy.options.static_clock_mhz must be a whole number, got 1200.5"),
        (0, "policy.options.static_clock_mhz must be > 0, got 0"),
    ],
)
def test_a_bad_static_clock_is_one_line(value: object, line: str) -> None:
    with pytest.raises(ConfigError) as raised:
        StaticClockOptions.from_mapping({"static_clock_mhz": value})
    assert str(raised.value) == line


@pytest.mark.parametrize("text", ["1200", "1200.0", 1200, 1200.0])
def test_a_static_clock_from_the_environment_is_read(text: object) -> None:
    """An environment variable arrives as text: ``"1200.0"`` failed the policy's ``int()`` in every
    decision, which the controller answered with the max clock."""
    assert StaticClockOptions.from_mapping({"static_clock_mhz": text}).static_clock_mhz == 1200
    options = pinned_clock_options(parse_policy("static"), Phase.DECODE, CLOCKS, {"static_clock_mhz": text})
    assert options == {"allowed_clocks_mhz": (1200,), "max_clock_mhz": 1200}


def test_the_controller_refuses_a_bad_static_clock_when_built() -> None:
    config = VoltanaConfig(policy={"clock": "static", "options": {"static_clock_mhz": True}})
    model = performance_model("a100-80gb", "llama-3.1-8b")
    with pytest.raises(ConfigError, match="static_clock_mhz must be a whole number, got True"):
        build_controller(config, Phase.DECODE, "d0", model, get_plugin_manager().hook)


def test_the_routes_see_the_configured_static_clock() -> None:
    """``--policies static`` pins ``policy.options.static_clock_mhz``: the routes were told the max clock."""
    options = pinned_clock_options(parse_policy("static"), Phase.PREFILL, CLOCKS, {"static_clock_mhz": 1000})
    assert options["max_clock_mhz"] == 1005


def test_simulate_refuses_a_true_static_clock_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = simulate_with_config(
        tmp_path, monkeypatch, capsys, "[policy.options]\nstatic_clock_mhz = true\n", "static"
    )
    assert code == 2
    assert lines == ["error: policy.options.static_clock_mhz must be a whole number, got True"]


def test_simulate_pins_a_static_clock_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__STATIC_CLOCK_MHZ", "1200.0")
    code, out, err = simulate_in_process(
        ["--duration", "3", "--rate", "4", "--policies", "static", "--json"], monkeypatch, capsys
    )
    assert not code, err
    assert "failed" not in err
    (result,) = json.loads(out)["points"][0]["results"]
    residency = result["clock_residency"]
    assert set(residency["prefill"]) == set(residency["decode"]) == {"1185"}  # the allowed clock nearest
