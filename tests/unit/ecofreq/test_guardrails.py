"""EcoFreq's decode U-curve choice and its guardrails: untrusted predictor, unseen batches, hysteresis."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from ecofreq_helpers import a100, controller, decode_snapshot, default_clocks
from pydantic import TypeAdapter

from tests.support.cli import simulate_with_config
from voltana.core.config import ConfigError, load_config
from voltana.core.types import DecisionReason, Phase
from voltana.plugins.ecofreq import EcoFreqOptions


def test_decode_takes_the_least_energy_clock_not_the_lowest_feasible() -> None:
    snapshot = decode_snapshot(64, 500)
    eco = controller(Phase.DECODE).decide(snapshot)
    paper = controller(Phase.DECODE, "voltana-paper").decide(snapshot)
    assert paper.clock_mhz == default_clocks()[0]  # the lowest clock already meets ITL ...
    assert eco.clock_mhz > paper.clock_mhz  # ... but a higher one costs less energy per token
    assert eco.reason is DecisionReason.ENERGY_OPTIMAL
    gpu = a100()
    eco_cost = gpu.cost(Phase.DECODE, 64, 64, 64 * 500, eco.clock_mhz)
    paper_cost = gpu.cost(Phase.DECODE, 64, 64, 64 * 500, paper.clock_mhz)
    assert eco_cost.energy_j < paper_cost.energy_j  # true on the simulated GPU, not only predicted
    assert eco_cost.latency_s <= 0.05


def test_high_recent_error_falls_back_to_the_max_clock() -> None:
    ctl = controller(Phase.DECODE)
    snapshot = decode_snapshot(32, 800)
    assert ctl.decide(snapshot).clock_mhz < default_clocks()[-1]
    rng = random.Random(5)
    clock = default_clocks()[-1]
    truth = a100().cost(Phase.DECODE, 32, 32, 32 * 800, clock).latency_s
    for _ in range(32):  # a wildly inconsistent GPU: +-50% iteration to iteration
        ctl.predictor.observe(32.0, 32 * 800.0, clock, truth * rng.choice((0.5, 1.5)))
    assert ctl.predictor.recent_mape() > EcoFreqOptions().mape_limit
    decision = ctl.decide(snapshot)
    assert decision.clock_mhz == clock
    assert decision.reason is DecisionReason.PREDICTOR_UNTRUSTED


def test_a_batch_beyond_what_the_predictor_has_seen_gets_the_max_clock() -> None:
    ctl = controller(Phase.DECODE)
    decision = ctl.decide(decode_snapshot(2048, 10))
    assert decision.clock_mhz == default_clocks()[-1]
    assert decision.reason is DecisionReason.PREDICTOR_UNTRUSTED


def test_moves_up_at_once_for_the_slo_but_waits_min_dwell_to_move_down() -> None:
    ctl = controller(Phase.DECODE, options={"min_dwell_s": 1.0, "hysteresis": 0.0})
    light, heavy = decode_snapshot(16, 500, now_s=0.0), decode_snapshot(256, 1000, now_s=0.01)
    low = ctl.decide(light)
    high = ctl.decide(heavy)
    assert high.clock_mhz > low.clock_mhz  # an SLO step-up is never delayed
    held = ctl.decide(decode_snapshot(16, 500, now_s=0.5))
    assert held.clock_mhz == high.clock_mhz
    assert held.reason is DecisionReason.HYSTERESIS
    later = ctl.decide(decode_snapshot(16, 500, now_s=1.5))
    assert later.clock_mhz == low.clock_mhz


def test_small_energy_gains_do_not_move_the_clock() -> None:
    ctl = controller(Phase.DECODE, options={"min_dwell_s": 0.0, "hysteresis": 0.5})
    first = ctl.decide(decode_snapshot(64, 500, now_s=0.0))
    # Another batch whose own optimum differs, but not by 50% of energy: the clock stays.
    second = ctl.decide(decode_snapshot(128, 200, now_s=1.0))
    assert second.clock_mhz == first.clock_mhz
    assert second.reason is DecisionReason.HYSTERESIS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mape_limit": "high"}, "policy.options.mape_limit must be a number, got 'high'"),
        ({"safety_margin": 1.5}, r"policy.options.safety_margin must be in \[0, 1\), got 1.5"),
        ({"prefill_token_budget": 0}, "policy.options.prefill_token_budget must be >= 1, got 0"),
        ({"prefill_token_budget": "8k"}, "prefill_token_budget must be a whole number, got '8k'"),
        ({"min_observations": 2.5}, "min_observations must be a whole number, got 2.5"),
        ({"plan_for_newcomer": "maybe"}, "plan_for_newcomer must be true or false, got 'maybe'"),
        # a number is not true or false (TOML `plan_for_newcomer = 0`), nor is a list of one
        ({"plan_for_newcomer": 0}, "policy.options.plan_for_newcomer must be true or false, got 0"),
        ({"plan_for_newcomer": [True]}, "plan_for_newcomer must be true or false, got \\[True\\]"),
        ({"idle_power_w": float("nan")}, "idle_power_w must be a finite number"),
        ({"decode_window_s": -1}, "decode_window_s must be >= 0"),
        # pydantic's lax numbers read true/false as 1/0: a bool is refused, not 1.0 s.
        ({"decode_window_s": True}, "policy.options.decode_window_s must be a number, got True"),
        ({"min_observations": False}, "min_observations must be a whole number, got False"),
    ],
)
def test_bad_options_are_one_line_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        EcoFreqOptions.from_mapping(options)
    assert "\n" not in str(raised.value)


def test_options_carry_their_descriptions_and_constraints() -> None:
    fields = TypeAdapter(EcoFreqOptions).json_schema()["properties"]
    assert set(fields) == {f.name for f in dataclasses.fields(EcoFreqOptions)}
    assert all(field.get("description") for field in fields.values())
    assert fields["safety_margin"]["minimum"] == 0 and fields["safety_margin"]["exclusiveMaximum"] == 1


def test_bad_options_in_a_config_are_one_line_for_simulate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = simulate_with_config(
        tmp_path, monkeypatch, capsys, '[policy]\noptions = { hysteresis = "lots" }\n', "ecofreq+ecoroute"
    )
    assert code == 2
    assert lines == ["error: policy.options.hysteresis must be a number, got 'lots'"]


def test_a_bool_option_in_a_config_is_one_line_for_simulate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = simulate_with_config(
        tmp_path, monkeypatch, capsys, "[policy.options]\ndecode_window_s = true\n", "ecofreq+ecoroute"
    )
    assert code == 2
    assert lines == ["error: policy.options.decode_window_s must be a number, got True"]


def test_numbers_arrive_as_ints_or_strings() -> None:
    """An int is a number; a ``VOLTANA_POLICY__OPTIONS__*`` variable arrives as a string."""
    options = {"decode_window_s": 5, "arrival_window_s": "1.5", "min_observations": "7"}
    opts = EcoFreqOptions.from_mapping(options)
    assert (opts.decode_window_s, opts.arrival_window_s, opts.min_observations) == (5.0, 1.5, 7)
    assert isinstance(opts.decode_window_s, float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("false", False), ("FALSE", False), ("0", False), ("no", False), ("True", True), ("1", True)],
)
def test_a_bool_option_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: bool
) -> None:
    """A ``VOLTANA_POLICY__OPTIONS__*`` variable arrives as a string: read as ``VOLTANA_ENABLED`` is (it was
    refused: ``plan_for_newcomer must be true or false, got 'false'``)."""
    monkeypatch.setenv("VOLTANA_POLICY__OPTIONS__PLAN_FOR_NEWCOMER", text)
    options = load_config().config.policy.options
    assert options == {"plan_for_newcomer": text}
    assert EcoFreqOptions.from_mapping(options).plan_for_newcomer is expected


def test_options_ignore_other_policies_keys() -> None:
    opts = EcoFreqOptions.from_mapping({"static_clock_mhz": 1200, "hysteresis": "0.1"})
    assert opts.hysteresis == 0.1


def test_the_first_batch_after_idle_is_not_held_at_the_idle_clock() -> None:
    ctl = controller(Phase.DECODE, options={"min_dwell_s": 10.0, "hysteresis": 0.0})
    idle = ctl.decide(decode_snapshot(0, 0, now_s=0.0))
    busy = ctl.decide(decode_snapshot(64, 500, now_s=0.001))
    assert idle.reason is DecisionReason.IDLE
    assert busy.clock_mhz > idle.clock_mhz
    assert busy.reason is DecisionReason.ENERGY_OPTIMAL
