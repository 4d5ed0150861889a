"""The PerformanceModel contract other layers build on (interface 1 of the design)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voltana.core.types import Phase
from voltana.hardware.device import GpuGroup
from voltana.hardware.errors import InvalidArgumentError, UnknownProfileError, VoltanaHardwareError
from voltana.hardware.simulated import (
    IterationCost,
    SimulatedGpu,
    known_gpus,
    known_models,
    performance_model,
)


@pytest.mark.parametrize("gpu", known_gpus())
@pytest.mark.parametrize("model", known_models())
def test_every_profile_builds_with_sane_shape(gpu: str, model: str) -> None:
    perf = performance_model(gpu, model)
    assert list(perf.supported_clocks_mhz) == sorted(perf.supported_clocks_mhz)
    assert perf.max_clock_mhz == perf.supported_clocks_mhz[-1]
    assert perf.kv_capacity_tokens > 10_000
    assert perf.idle_power_w() > 0
    cost = perf.cost(Phase.DECODE, 8, 8, 8 * 500, perf.max_clock_mhz)
    assert isinstance(cost, IterationCost)
    assert cost.latency_s > 0 and cost.energy_j == pytest.approx(cost.avg_power_w * cost.latency_s)


def test_default_tp_and_instance_totals() -> None:
    tp4 = performance_model("a100-80gb", "llama-2-70b")
    assert tp4.tp == 4
    tp8 = performance_model("a100-80gb", "llama-2-70b", tp=8)
    assert tp8.idle_power_w() == pytest.approx(2 * tp4.idle_power_w())
    assert performance_model("h100-80gb", "qwen3-32b").tp == 2


def test_unknown_profiles_name_the_choices() -> None:
    with pytest.raises(UnknownProfileError, match="a100-80gb"):
        performance_model("v100", "llama-3.1-8b")
    with pytest.raises(ValueError, match=r"llama-3\.1-8b"):
        performance_model("a100-80gb", "gpt-5")


def test_unsupported_clock_snaps_to_nearest_supported() -> None:
    perf = performance_model()
    snapped = perf.cost(Phase.PREFILL, 1, 512, 0, 1007)
    exact = perf.cost(Phase.PREFILL, 1, 512, 0, 1005)
    assert snapped == exact


def test_empty_batch_costs_nothing() -> None:
    perf = performance_model()
    cost = perf.cost(Phase.DECODE, 0, 0, 0, 1410)
    assert cost.latency_s == 0.0 and cost.energy_j == 0.0


def test_decode_pads_to_capture_sizes() -> None:
    perf = performance_model()
    assert perf.padded_batch(5) == 8
    assert perf.padded_batch(129) == 136
    assert perf.padded_batch(600) == 600
    assert perf.cost(Phase.DECODE, 5, 5, 500, 1410).latency_s == pytest.approx(
        perf.cost(Phase.DECODE, 8, 8, 500, 1410).latency_s, rel=0.01
    )


@settings(max_examples=200, deadline=None)
@given(
    profile=st.sampled_from([(g, m) for g in known_gpus() for m in known_models()]),
    phase=st.sampled_from(list(Phase)),
    batch=st.integers(1, 512),
    new_per_request=st.integers(1, 4096),
    context_per_request=st.integers(0, 8192),
)
def test_physics_invariants(
    profile: tuple[str, str], phase: Phase, batch: int, new_per_request: int, context_per_request: int
) -> None:
    perf = performance_model(*profile)
    new = batch if phase is Phase.DECODE else batch * new_per_request
    previous_latency = float("inf")
    for clock in (*perf.supported_clocks_mhz[::10], perf.max_clock_mhz):
        cost = perf.cost(phase, batch, new, batch * context_per_request, clock)
        assert cost.latency_s > 0 and cost.energy_j > 0
        assert cost.effective_clock_mhz <= clock
        assert cost.avg_power_w <= perf.gpu.tdp_w * perf.tp + 1e-9
        assert cost.avg_power_w >= perf.idle_power_w()
        assert cost.latency_s <= previous_latency * (1 + 1e-12)  # a faster clock never makes it slower
        previous_latency = cost.latency_s


def test_group_of_mixed_devices_uses_common_clocks_and_slowest_read_back() -> None:
    a100 = SimulatedGpu(0, performance_model("a100-80gb"))
    h100 = SimulatedGpu(1, performance_model("h100-80gb"))
    group = GpuGroup([a100, h100])
    assert group.supported_clocks_mhz()[0] == 345 and group.max_clock_mhz() == 1410
    assert group.lock_clock_mhz(1005) == 1005
    with pytest.raises(InvalidArgumentError, match="not supported"):
        group.lock_clock_mhz(1980)
    group.reset_clocks()
    assert group.current_clock_mhz() == 1410


def test_empty_group_is_a_clear_error() -> None:
    with pytest.raises(VoltanaHardwareError, match="no GPU devices selected"):
        GpuGroup([])
