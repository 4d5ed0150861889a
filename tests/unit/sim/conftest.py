"""Shared simulator fixtures: the default A100/Llama-3.1-8B model and a setup with the paper's clock range."""

from __future__ import annotations

from typing import Any

import pytest

from voltana.core.config import VoltanaConfig
from voltana.hardware.simulated import PerformanceModel, performance_model
from voltana.plugins import get_plugin_manager
from voltana.sim.cluster import ClusterSpec
from voltana.sim.runner import PAPER_MIN_CLOCK_MHZ, SimulationSetup, kv_bytes_per_token


@pytest.fixture(scope="session")
def a100_llama() -> PerformanceModel:
    return performance_model("a100-80gb", "llama-3.1-8b")


def make_setup(
    model: PerformanceModel, num_prefill: int = 2, num_decode: int = 2, **cluster: Any
) -> SimulationSetup:
    config = VoltanaConfig(clocks={"min_mhz": PAPER_MIN_CLOCK_MHZ})
    spec = ClusterSpec(
        model, num_prefill, num_decode, kv_bytes_per_token=kv_bytes_per_token(model), **cluster
    )
    return SimulationSetup(spec, config, get_plugin_manager().hook, seed=0)


@pytest.fixture
def setup(a100_llama: PerformanceModel) -> SimulationSetup:
    return make_setup(a100_llama)
