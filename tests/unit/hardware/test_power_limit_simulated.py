"""Power limits on the simulated GPU: the model throttles the SM clock under a cap; the device keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voltana.core.types import Phase
from voltana.hardware.device import PowerLimits
from voltana.hardware.errors import InvalidArgumentError
from voltana.hardware.simulated import open_simulated, performance_model, simulated_power_cap_w

LONG_PREFILL = (
    Phase.PREFILL,
    1,
    1024,
    0,
)  # a compute-bound prompt: the A100 runs into its 400 W TDP at 1410 MHz


def test_a_cap_below_the_draw_throttles_the_clock_until_power_fits() -> None:
    perf = performance_model("a100-80gb", "llama-3.1-8b")
    free = perf.cost(*LONG_PREFILL, 1410)
    capped = perf.cost(*LONG_PREFILL, 1410, power_cap_w=250.0)
    assert free.avg_power_w > 300.0
    assert capped.effective_clock_mhz < free.effective_clock_mhz
    assert capped.avg_power_w <= 250.0
    assert capped.latency_s > free.latency_s  # slower: the price of the cap
    # the throttled iteration is the iteration at the clock the cap allowed (one step higher would not fit)
    at_effective = perf.cost(*LONG_PREFILL, capped.effective_clock_mhz)
    assert capped == at_effective
    one_step_up = perf.supported_clocks_mhz[perf.supported_clocks_mhz.index(capped.effective_clock_mhz) + 1]
    assert perf.cost(*LONG_PREFILL, one_step_up).avg_power_w > 250.0


def test_a_cap_above_the_draw_changes_nothing_and_tdp_stays_the_ceiling() -> None:
    perf = performance_model("a100-80gb", "llama-3.1-8b")
    decode = (Phase.DECODE, 8, 8, 8 * 500, 1410)
    assert perf.cost(*decode, power_cap_w=390.0) == perf.cost(*decode)
    h100 = performance_model("h100-80gb", "llama-3.1-8b")
    heavy = (Phase.PREFILL, 1, 4096, 0, 1980)
    assert h100.cost(*heavy, power_cap_w=5000.0) == h100.cost(*heavy)  # a cap above TDP: TDP binds
    assert h100.cost(*heavy).effective_clock_mhz < 1980


@settings(max_examples=60, deadline=None)
@given(
    cap_w=st.floats(min_value=100.0, max_value=400.0),
    tokens=st.integers(min_value=1, max_value=4096),
    clock_index=st.integers(min_value=0, max_value=80),
)
def test_power_stays_under_any_accepted_cap(cap_w: float, tokens: int, clock_index: int) -> None:
    perf = performance_model("a100-80gb", "llama-3.1-8b")
    clock = perf.supported_clocks_mhz[clock_index]
    cost = perf.cost(Phase.PREFILL, 1, tokens, 0, clock, power_cap_w=cap_w)
    assert cost.effective_clock_mhz <= clock
    assert cost.avg_power_w <= cap_w + 1e-9 or cost.effective_clock_mhz == perf.supported_clocks_mhz[0]


def test_device_power_limit_set_read_back_reset(tmp_path: Path) -> None:
    group = open_simulated("a100-80gb", "llama-2-70b", tp=2, state_dir=tmp_path)
    assert group.power_limits() == PowerLimits(400.0, 400.0, 100.0, 400.0)  # [A100-PL]
    assert simulated_power_cap_w(group) is None
    assert group.set_power_limit_w(275.0) == 275.0
    assert group.power_limits().current_w == 275.0
    assert simulated_power_cap_w(group) == 275.0
    state = json.loads((tmp_path / "gpu1.json").read_text())
    assert state["power_limit_w"] == 275.0 and state["events"] == ["power_limit 275"]
    group.reset_power_limit()
    assert group.power_limits().current_w == 400.0
    assert simulated_power_cap_w(group) is None
    assert json.loads((tmp_path / "gpu0.json").read_text())["events"] == ["power_limit 275", "power_reset"]


@pytest.mark.parametrize("limit_w", [50.0, 99.9, 400.5, 1000.0])
def test_a_limit_outside_the_accepted_range_is_one_line_and_sets_nothing(limit_w: float) -> None:
    group = open_simulated("a100-80gb", "llama-3.1-8b")
    with pytest.raises(InvalidArgumentError) as caught:
        group.set_power_limit_w(limit_w)
    message = str(caught.value)
    assert "\n" not in message and "100..400 W" in message and f"{limit_w:g} W" in message
    assert group.power_limits().current_w == 400.0
    assert group.devices[0].driver_calls == 0


def test_h100_accepts_200_to_700_w() -> None:
    group = open_simulated("h100-80gb", "llama-3.1-8b")
    assert group.power_limits() == PowerLimits(700.0, 700.0, 200.0, 700.0)  # [H100-PL]
    with pytest.raises(InvalidArgumentError):
        group.set_power_limit_w(150.0)
