"""The Ray Serve integration's Ray-free parts: replica state <-> routing stats <-> InstanceState, and the
replica engine with voltana's per-iteration clock control and energy accounting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase, RequestRecord
from voltana.emulator.engine import EmuRequest
from voltana.emulator.responses import expected_text
from voltana.hardware.simulated import performance_model
from voltana.integrations.ray_serve.engine import VoltanaEngine
from voltana.integrations.ray_serve.stats import ROUTING_STATS_KEY, ReplicaStats, instance_state
from voltana.plugins import get_plugin_manager

STATS = ReplicaStats(
    instance_id="r1", role="decode", policy="ecofreq", sm_clock_mhz=1110, capture_sizes=(1, 2, 4, 8),
    num_running=5, num_waiting=2, kv_tokens=900, kv_capacity_tokens=4000, iterations=12, energy_j=3.5,
    updated_at_s=100.0,
)  # fmt: skip


def test_routing_stats_round_trip_under_the_voltana_key() -> None:
    payload = STATS.to_routing_stats()
    assert set(payload) == {ROUTING_STATS_KEY}
    assert ReplicaStats.from_routing_stats(payload) == STATS
    assert ReplicaStats.from_routing_stats({}) is None
    assert ReplicaStats.from_routing_stats(None) is None


def test_the_vllm_adapter_state_payload_parses_and_bad_fields_take_defaults() -> None:
    vllm_state = {"instance_id": "e0", "role": "decode", "sm_clock_mhz": 1410, "capture_sizes": [8, 1, 4],
                  "num_requests_running": 3, "num_requests_waiting": 1, "kv_tokens": 77,
                  "kv_capacity_tokens": 1000, "iterations": 9, "updated_at_s": 5.0, "engine": 0}  # fmt: skip
    parsed = ReplicaStats.from_state(vllm_state)
    assert parsed.capture_sizes == (1, 4, 8)
    assert (parsed.num_running, parsed.num_waiting, parsed.energy_j) == (3, 1, None)
    junk = ReplicaStats.from_state({"sm_clock_mhz": "fast", "num_requests_running": True, "capture_sizes": 3})
    assert (junk.sm_clock_mhz, junk.num_running, junk.capture_sizes) == (None, 0, ())


def test_instance_state_uses_fresh_published_load_and_the_routers_in_flight_count() -> None:
    fresh = instance_state("r1", Phase.DECODE, STATS, inflight=7, now_s=101.0, stale_after_s=5.0)
    assert (fresh.num_running, fresh.num_waiting, fresh.kv_tokens) == (7, 2, 900)  # max(7 mine, 5 published)
    assert (fresh.sm_clock_mhz, fresh.capture_sizes, fresh.kv_capacity_tokens) == (1110, (1, 2, 4, 8), 4000)
    busy = instance_state("r1", Phase.DECODE, STATS, inflight=1, now_s=101.0, stale_after_s=5.0)
    assert busy.num_running == 5
    stale = instance_state("r1", Phase.DECODE, STATS, inflight=1, now_s=200.0, stale_after_s=5.0)
    assert (stale.num_running, stale.num_waiting, stale.kv_tokens) == (1, 0, 0)
    assert stale.sm_clock_mhz == 1110  # static facts stay
    unknown = instance_state("r2", Phase.PREFILL, None, inflight=3, now_s=0.0, stale_after_s=5.0)
    assert (unknown.num_running, unknown.sm_clock_mhz, unknown.capture_sizes) == (3, None, ())


class Recorder:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def voltana_request_finished(self, record: RequestRecord) -> None:
        self.records.append(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(get_plugin_manager().hook, name)


@pytest.mark.parametrize("role", [Phase.PREFILL, Phase.DECODE])
def test_engine_decides_a_clock_per_iteration_and_splits_its_energy_over_requests(role: Phase) -> None:
    hook = Recorder()
    config = VoltanaConfig(enabled=True, hardware={"vendor": "simulated"}, clocks={"min_mhz": 1005})
    model = performance_model("a100-80gb", "llama-3.1-8b")

    async def serve() -> tuple[VoltanaEngine, list[str]]:
        engine = VoltanaEngine(
            config=config, role=role, instance_id="x", hook=hook, model=model, time_scale=0.0
        )
        engine.start()
        max_tokens = 1 if role is Phase.PREFILL else 6
        requests = [
            EmuRequest(f"r{i}", f"k{i}", 200 + 50 * i, max_tokens, needs_prefill=True) for i in range(3)
        ]
        for req in requests:
            engine.admit(req)
        texts = []
        for req in requests:
            parts = []
            while (token := await req.tokens.get()) is not None:
                parts.append(token)
            texts.append("".join(parts))
            engine.finish(
                req,
                first_token_time_s=None,
                trace_headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
            )
        await engine.stop()
        return engine, texts

    engine, texts = asyncio.run(serve())
    assert texts == [expected_text(f"k{i}", 1 if role is Phase.PREFILL else 6) for i in range(3)]
    stats = engine.stats()
    assert stats.iterations > 0 and stats.energy_j is not None and stats.energy_j > 0
    assert stats.sm_clock_mhz is not None and 1005 <= stats.sm_clock_mhz <= model.max_clock_mhz
    assert (stats.role, stats.capture_sizes) == (role.value, tuple(model.capture_sizes))
    assert [r.request_id for r in hook.records] == ["r0", "r1", "r2"]
    assert all(r.phase is role and r.energy_j > 0 and r.trace_headers for r in hook.records)
    assert sum(r.energy_j for r in hook.records) == pytest.approx(stats.energy_j)  # every joule attributed
    assert all(min(r.clock_residency_s) >= 1005 for r in hook.records)


def test_a_clock_ceiling_holds_every_iteration_shows_in_the_stats_and_lapses_with_its_lease() -> None:
    hook = Recorder()
    # static-max: the policy alone asks the top clock every iteration, so only the ceiling holds it lower
    config = VoltanaConfig(enabled=True, hardware={"vendor": "simulated"}, policy={"clock": "static-max"})
    model = performance_model("a100-80gb", "llama-3.1-8b")
    engine = VoltanaEngine(
        config=config, role=Phase.DECODE, instance_id="x", hook=hook, model=model, time_scale=0.0
    )
    ceiling_mhz = 900
    requests = [EmuRequest(f"r{i}", f"k{i}", 300 + 100 * i, 8, needs_prefill=True) for i in range(3)]

    async def serve() -> int:
        engine.set_clock_ceiling(ceiling_mhz, lease_s=60.0)
        for req in requests:
            engine.admit(req)
        pending = engine.pending_prompt_tokens()  # before the loop starts: every prompt is still queued
        engine.start()
        for req in requests:
            while await req.tokens.get() is not None:
                pass
            engine.finish(req, first_token_time_s=None)
        await engine.stop()
        return pending

    assert asyncio.run(serve()) == 300 + 400 + 500
    assert engine.pending_prompt_tokens() == 0
    stats = engine.stats()
    assert stats.clock_ceiling_mhz == ceiling_mhz
    assert ReplicaStats.from_routing_stats(stats.to_routing_stats()) == stats
    # Every iteration of every request ran at the highest clock under the ceiling, not the policy's top.
    under = max(c for c in model.supported_clocks_mhz if c <= ceiling_mhz)
    assert len(hook.records) == 3 and all(set(r.clock_residency_s) == {under} for r in hook.records)
    assert all(c.clock_ceiling_mhz == ceiling_mhz for c in engine.controllers.values())
    # A lease not renewed lapses: the stats stop showing it and the controllers are released.
    engine.set_clock_ceiling(ceiling_mhz, lease_s=1e-3)
    deadline = time.monotonic() + 5.0
    while engine.clock_ceiling_mhz() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().clock_ceiling_mhz is None
    engine.set_clock_ceiling(None, lease_s=1.0)
    assert all(c.clock_ceiling_mhz is None for c in engine.controllers.values())
