"""EcoPred's closed-form prefill time equals the chunk-by-chunk sum the predicted-TTFT router used to do."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voltana.core.config import VoltanaConfig
from voltana.core.predictor import LatencyPredictor
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.hardware.simulated import performance_model
from voltana.plugins import get_plugin_manager
from voltana.plugins.ecofreq.factory import build_controller
from voltana.plugins.routing import predicted_prefill_s


@cache
def predictor() -> LatencyPredictor:
    model = performance_model("a100-80gb", "llama-3.1-8b")
    config = VoltanaConfig(clocks={"min_mhz": 1005}, policy={"clock": "ecofreq"})
    controller = build_controller(config, Phase.PREFILL, "p0", model, get_plugin_manager().hook)
    learned = controller.predictor
    assert isinstance(learned, LatencyPredictor)
    # Some online learning first, so drift and gains are not at their seeds.
    for i in range(40):
        tokens = 512 + 300 * i
        request = ScheduledRequest("r", tokens, 1000 * i, 0.0)
        snapshot = BatchSnapshot(Phase.PREFILL, (request,), (), 0.0, tokens, 1000 * i)
        learned.observe_iteration(
            snapshot, 1410, model.cost(Phase.PREFILL, 1, tokens, 1000 * i, 1410).latency_s * 1.1
        )
    return learned


class ChunkByChunk:
    """The same predictor without the closed form: the router falls back to one prediction per chunk."""

    def __init__(self, inner: LatencyPredictor) -> None:
        self.predict_latency_s = inner.predict_latency_s


@settings(max_examples=80, deadline=None)
@given(
    tokens=st.integers(0, 3_000_000),
    budget=st.sampled_from([512, 2048, 8192, 16384]),
    clock=st.sampled_from([1005, 1200, 1207, 1410, 900, 1500]),
)
def test_closed_form_equals_the_sum_over_chunks(tokens: int, budget: int, clock: int) -> None:
    learned = predictor()
    slow = predicted_prefill_s(ChunkByChunk(learned), tokens, budget, clock)
    fast = predicted_prefill_s(learned, tokens, budget, clock)
    assert fast == pytest.approx(slow, rel=1e-9, abs=1e-12)
