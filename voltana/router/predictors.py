"""Latency predictors for clock-aware routing (EcoRoute's clock step, predicted-TTFT), seeded the way the
engines seed theirs: from ``engine.predictor_profile`` (a ``voltana profile`` file of the real GPUs), else
from the simulated GPU when ``hardware.vendor = "simulated"``. Without either, policies route on load and
batch boundaries only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from voltana.core.config import VoltanaConfig
from voltana.core.predictor import EnergyPredictor, LatencyPredictor
from voltana.core.profile import Profile, load_profile
from voltana.core.types import Phase
from voltana.hardware.simulated import performance_model
from voltana.plugins.ecofreq.factory import profile_from_model, resolve_allowed_clocks

log = logging.getLogger("voltana.router")


@dataclass(frozen=True)
class RoutePredictors:
    """Latency and energy predictors per phase, the clocks they cover (ascending MHz) and the instance's
    idle power (W; 0 when unknown), which EcoRoute nets out of marginal energy."""

    by_phase: dict[Phase, Any]
    clocks_mhz: tuple[int, ...]
    energy_by_phase: dict[Phase, Any] = field(default_factory=dict)
    idle_power_w: float = 0.0


def route_predictors(config: VoltanaConfig) -> RoutePredictors | None:
    """Predictors for the router, or None when no seed is configured. Raises ValueError (one line)."""

    profile: Profile
    idle_power_w = 0.0
    if config.engine.predictor_profile:
        profile = load_profile(config.engine.predictor_profile)
        clocks = resolve_allowed_clocks(config.clocks, profile.clocks_mhz)
    elif config.hardware.vendor == "simulated":
        model = performance_model(config.hardware.simulated_gpu, config.hardware.simulated_model)
        clocks = resolve_allowed_clocks(config.clocks, model.supported_clocks_mhz)
        profile = profile_from_model(model, clocks)
        idle_power_w = float(model.idle_power_w())
    else:
        return None
    by_phase = {phase: LatencyPredictor.from_profile(profile, phase, clocks) for phase in Phase}
    energy = {phase: EnergyPredictor.from_profile(profile, phase, clocks) for phase in Phase}
    log.info("clock-aware routing: predictors from %s over %d clocks", profile.source, len(clocks))
    return RoutePredictors(by_phase, tuple(clocks), energy, idle_power_w)
