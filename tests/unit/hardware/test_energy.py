"""EnergyMeter windows over simulated counters, and the per-request attribution rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voltana.core.attribution import attribute_energy
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.hardware.device import EnergyCounter, visible_device_map
from voltana.hardware.energy import EnergyMeter
from voltana.hardware.simulated import open_simulated, record_iteration


def test_windows_measure_iterations_on_all_tp_gpus() -> None:
    group = open_simulated(model="qwen3-32b")  # TP2
    meter = EnergyMeter(group)
    perf = group.devices[0].model  # type: ignore[attr-defined]
    run = meter.begin()
    first = meter.begin()
    cost = perf.cost(Phase.PREFILL, 1, 1024, 0, 1200)
    record_iteration(group, cost)
    assert meter.end(first) == pytest.approx(cost.energy_j)
    second = meter.begin()
    decode = perf.cost(Phase.DECODE, 16, 16, 16_000, 1005)
    record_iteration(group, decode)
    assert meter.end(second) == pytest.approx(decode.energy_j)
    assert meter.end(run) == pytest.approx(cost.energy_j + decode.energy_j)
    assert meter.per_device_j()[0] == pytest.approx(meter.per_device_j()[1])
    assert group.power_w() == pytest.approx(decode.avg_power_w)


def test_idle_time_accrues_idle_power() -> None:
    group = open_simulated()
    meter = EnergyMeter(group)
    window = meter.begin()
    for device in group.devices:
        device.advance_idle_s(2.0)  # type: ignore[attr-defined]
    assert meter.end(window) == pytest.approx(2.0 * 63.0)


def test_energy_counter_never_goes_backwards() -> None:
    counter = EnergyCounter(joules_per_unit=1e-3)
    totals = [counter.update(raw) for raw in (10, 20, 2**32 - 5, 3, 9)]
    assert totals == sorted(totals)
    assert totals[-1] == pytest.approx((10 + (2**32 - 5 - 20) + 8 + 6) * 1e-3)


def test_visible_device_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_device_map("CUDA_VISIBLE_DEVICES", 3) == [0, 1, 2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert visible_device_map("CUDA_VISIBLE_DEVICES", 3) == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")  # stops at the first invalid entry, like CUDA
    assert visible_device_map("CUDA_VISIBLE_DEVICES", 3) == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_device_map("CUDA_VISIBLE_DEVICES", 3) == []


def _snapshot(requests: list[tuple[int, int]]) -> BatchSnapshot:
    return BatchSnapshot.build(
        Phase.DECODE,
        [ScheduledRequest(f"r{i}", new, context, 0.0) for i, (new, context) in enumerate(requests)],
        now_s=0.0,
    )


def test_prefill_shares_follow_prompt_tokens_and_decode_shares_are_equal() -> None:
    prefill = attribute_energy(_snapshot([(300, 0), (100, 0)]), 10.0)
    assert prefill["r0"] > 2.9 * prefill["r1"]
    decode = attribute_energy(_snapshot([(1, 500)] * 4), 8.0)
    assert decode == pytest.approx({f"r{i}": 2.0 for i in range(4)})
    longer_context = attribute_energy(_snapshot([(1, 100), (1, 8000)]), 1.0)
    assert longer_context["r1"] > longer_context["r0"]


def test_empty_batch_attributes_nothing() -> None:
    assert attribute_energy(_snapshot([]), 5.0) == {}


@given(
    requests=st.lists(st.tuples(st.integers(0, 8192), st.integers(0, 131072)), min_size=1, max_size=64),
    energy_j=st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False),
)
def test_attribution_sums_exactly_and_is_non_negative(
    requests: list[tuple[int, int]], energy_j: float
) -> None:
    shares = attribute_energy(_snapshot(requests), energy_j)
    assert sum(shares.values()) == energy_j
    assert set(shares) == {f"r{i}" for i in range(len(requests))}
    assert all(share >= -1e-9 * max(1.0, energy_j) for share in shares.values())
