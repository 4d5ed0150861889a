"""build_controller: clocks from config, predictors seeded from the simulated GPU or a profile file."""

from __future__ import annotations

from pathlib import Path

import pytest
from ecofreq_helpers import a100, a100_profile, decode_snapshot, plugin_hook

from voltana.core.config import ClockConfig, VoltanaConfig
from voltana.core.profile import ProfileError, save_profile
from voltana.core.types import Phase
from voltana.plugins.ecofreq_seed import build_controller, resolve_allowed_clocks

A100_CLOCKS = a100().supported_clocks_mhz


def test_default_clocks_are_eight_levels_over_the_supported_range() -> None:
    clocks = resolve_allowed_clocks(ClockConfig(), A100_CLOCKS)
    assert len(clocks) == 8
    assert clocks[0] == 210 and clocks[-1] == 1410
    assert set(clocks) <= set(A100_CLOCKS)


def test_explicit_clocks_are_snapped_and_ranges_are_honoured() -> None:
    assert resolve_allowed_clocks(ClockConfig(allowed_mhz=[1005, 1411, 1200]), A100_CLOCKS) == (
        1005,
        1200,
        1410,
    )
    ranged = resolve_allowed_clocks(ClockConfig(min_mhz=1005, max_mhz=1410), A100_CLOCKS)
    assert ranged[0] == 1005 and ranged[-1] == 1410 and len(ranged) == 8
    assert resolve_allowed_clocks(ClockConfig(min_mhz=1005, max_mhz=1050), A100_CLOCKS) == (
        1005,
        1020,
        1035,
        1050,
    )
    with pytest.raises(ValueError, match="contains no supported clock"):
        resolve_allowed_clocks(ClockConfig(min_mhz=5000), A100_CLOCKS)
    with pytest.raises(ValueError, match=r"clocks\.allowed_mhz \[2000\] not supported"):
        resolve_allowed_clocks(ClockConfig(allowed_mhz=[1005, 2000]), A100_CLOCKS)


def test_built_from_config_and_the_simulated_gpu() -> None:
    config = VoltanaConfig(slo={"ttft_s": 1.0, "itl_s": 0.04}, policy={"safety_margin": 0.2})
    ctl = build_controller(config, Phase.DECODE, "d0", a100(), plugin_hook())
    assert ctl.allowed_clocks_mhz == resolve_allowed_clocks(config.clocks, A100_CLOCKS)
    assert ctl.ctx.slo.itl_s == 0.04 and ctl.ctx.options["safety_margin"] == 0.2
    assert ctl.ctx.policy == "ecofreq"
    decision = ctl.decide(decode_snapshot(64, 500))
    assert decision.clock_mhz in ctl.allowed_clocks_mhz
    assert decision.predicted_latency_s is not None and decision.predicted_latency_s <= 0.04 * 0.8


def test_built_from_a_profile_file_without_a_simulated_gpu(tmp_path: Path) -> None:
    path = save_profile(a100_profile(), tmp_path / "a100.json")
    config = VoltanaConfig(engine={"predictor_profile": str(path)}, clocks={"min_mhz": 1005})
    ctl = build_controller(config, Phase.PREFILL, "p0", None, plugin_hook())
    assert ctl.allowed_clocks_mhz[0] >= 1005
    assert set(ctl.allowed_clocks_mhz) <= set(a100_profile().clocks_mhz)


def test_device_clocks_win_over_the_profile_clocks(tmp_path: Path) -> None:
    path = save_profile(a100_profile(), tmp_path / "a100.json")
    config = VoltanaConfig(engine={"predictor_profile": str(path)}, clocks={"allowed_mhz": [1005, 1410]})
    ctl = build_controller(config, Phase.DECODE, "d0", None, plugin_hook(), supported_clocks_mhz=A100_CLOCKS)
    assert ctl.allowed_clocks_mhz == (1005, 1410)  # interpolated from the profile's clock levels


def test_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no supported clocks"):
        build_controller(VoltanaConfig(), Phase.DECODE, "d0", None, plugin_hook())
    with pytest.raises(ValueError, match="predictor_profile"):
        build_controller(
            VoltanaConfig(), Phase.DECODE, "d0", None, plugin_hook(), supported_clocks_mhz=A100_CLOCKS
        )
    missing = VoltanaConfig(engine={"predictor_profile": str(tmp_path / "none.json")})
    with pytest.raises(ProfileError, match="not found"):
        build_controller(missing, Phase.DECODE, "d0", a100(), plugin_hook())
    bad_knob = VoltanaConfig(policy={"options": {"hysteresis": "lots"}})
    with pytest.raises(ValueError, match=r"policy\.options\.hysteresis"):
        build_controller(bad_knob, Phase.DECODE, "d0", a100(), plugin_hook())
    negative = VoltanaConfig(policy={"options": {"idle_power_w": -5}})
    with pytest.raises(ValueError, match="idle_power_w must be >= 0, got -5"):
        build_controller(negative, Phase.PREFILL, "p0", a100(), plugin_hook())


def test_the_simulated_gpu_tells_ecofreq_its_idle_power_unless_config_does() -> None:
    ctl = build_controller(VoltanaConfig(), Phase.DECODE, "d0", a100(), plugin_hook())
    assert ctl.ctx.options["idle_power_w"] == a100().idle_power_w()
    own = VoltanaConfig(policy={"options": {"idle_power_w": 40.0}})
    assert (
        build_controller(own, Phase.DECODE, "d0", a100(), plugin_hook()).ctx.options["idle_power_w"] == 40.0
    )
