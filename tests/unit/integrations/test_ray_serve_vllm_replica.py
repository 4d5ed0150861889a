"""Ray Serve LLM's vLLM replicas with voltana, Ray-free parts: the engine state the replica adds to its
routing stats (files written by the vLLM adapter's real ``StatePublisher``), and the voltana config and
router a deployment's ``LLMConfig`` gets (read back by voltana's own ``load_config``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from voltana.adapters.state_payload import StatePublisher
from voltana.adapters.vllm.state import engine_state_path
from voltana.core.config import VoltanaConfig, load_config
from voltana.core.state_payload import InstanceStatePayload
from voltana.core.types import Phase
from voltana.integrations.ray_serve.stats import ReplicaStats
from voltana.integrations.ray_serve.vllm_replica import (
    ROUTERS,
    VoltanaRoutingStatsMixin,
    replica_state,
    voltana_llm_config,
)


def _publish(directory: Path, engine: int, **fields: Any) -> InstanceStatePayload:
    """Write one engine's state the way the vLLM scheduler hook does (its publisher, its file name)."""
    payload = InstanceStatePayload(engine=engine, **fields)
    publisher = StatePublisher(engine_state_path(directory, engine)).start()
    publisher.submit(payload)
    assert publisher.flush()
    publisher.close(remove=False)
    return payload


ENGINE_0 = {
    "instance_id": "vllm-decode-0-41", "role": "decode", "policy": "ecofreq", "monitor_only": False,
    "sm_clock_mhz": 1305, "capture_sizes": (1, 2, 4, 8), "num_requests_running": 3, "num_requests_waiting": 1,
    "kv_tokens": 700, "kv_capacity_tokens": 8000, "iterations": 40, "energy_source": "simulated",
    "energy_joules": 12.5,
}  # fmt: skip


def test_one_engine_state_is_the_replica_state_as_published(tmp_path: Path) -> None:
    published = _publish(tmp_path, 0, updated_at_s=time.time(), **ENGINE_0)
    state = replica_state(tmp_path)
    assert state is not None
    assert InstanceStatePayload.from_json(state) == published
    stats = ReplicaStats.from_state(state)  # what the router parses
    assert (stats.sm_clock_mhz, stats.capture_sizes, stats.num_running, stats.energy_j) == (
        1305, (1, 2, 4, 8), 3, 12.5,
    )  # fmt: skip


def test_an_idle_engines_old_state_still_counts(tmp_path: Path) -> None:
    """An idle engine does not republish; its last state stays the replica's (the adapter's HTTP reader
    drops files older than a minute, this replica-local reader does not)."""
    _publish(tmp_path, 0, updated_at_s=time.time() - 3600, **ENGINE_0)
    state = replica_state(tmp_path)
    assert state is not None and state["sm_clock_mhz"] == 1305


def test_several_engines_sum_their_load_and_energy(tmp_path: Path) -> None:
    now = time.time()
    _publish(tmp_path, 1, updated_at_s=now, **{**ENGINE_0, "instance_id": "vllm-decode-1-42",
             "sm_clock_mhz": 1410, "num_requests_running": 2, "energy_joules": 2.5})  # fmt: skip
    _publish(tmp_path, 0, updated_at_s=now - 5, **ENGINE_0)
    state = replica_state(tmp_path)
    assert state is not None
    assert state["instance_id"] == "vllm-decode-0-41" and state["sm_clock_mhz"] == 1305  # lowest rank's
    assert state["num_requests_running"] == 5 and state["kv_capacity_tokens"] == 16000
    assert state["energy_joules"] == pytest.approx(15.0) and state["iterations"] == 80
    assert state["updated_at_s"] == pytest.approx(now)


def test_no_state_without_voltana_or_before_the_engine_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("_VOLTANA_VLLM_STATE_DIR", raising=False)
    assert replica_state() is None  # voltana's plugin did not run in this process
    assert replica_state(tmp_path) is None  # it did, the engine has not published yet
    (tmp_path / "engine-0.json").write_text('{"version": 99}')  # a newer voltana's file: not understood
    assert replica_state(tmp_path) is None


class _Base:
    """The shape of Ray Serve LLM's ``LLMServer.record_routing_stats``: the engine's stats, a dict."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    async def record_routing_stats(self) -> dict[str, Any]:
        return dict(self.stats)


class _Server(VoltanaRoutingStatsMixin, _Base):
    pass


def test_the_mixin_adds_voltanas_state_and_keeps_the_base_stats(tmp_path: Path) -> None:
    server = _Server({"kv_events_endpoint": "tcp://10.0.0.1:5557"})
    server.voltana_state_dir = tmp_path
    assert asyncio.run(server.record_routing_stats()) == {"kv_events_endpoint": "tcp://10.0.0.1:5557"}
    _publish(tmp_path, 0, updated_at_s=time.time(), **ENGINE_0)
    stats = asyncio.run(server.record_routing_stats())
    assert stats["kv_events_endpoint"] == "tcp://10.0.0.1:5557"
    assert stats["voltana"] == replica_state(tmp_path)


ROLE_CONFIG = {
    "hardware": {"vendor": "simulated"},
    "slo": {"ttft_s": 0.6, "itl_s": 0.04},
    "policy": {"clock": "ecofreq", "decode_route": "ecoroute", "options": {"alpha": 0.5}},
}


def test_the_llm_config_gets_voltana_as_env_vars_that_load_config_reads_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = {
        "model_loading_config": {"model_id": "m"},
        "runtime_env": {"env_vars": {"HF_HOME": "/models", "VOLTANA_ENABLED": "false"}},
        "deployment_config": {"max_ongoing_requests": 64},
    }
    result = voltana_llm_config(
        original, Phase.DECODE, ROLE_CONFIG, num_replicas=3, router_kwargs={"policy": "ecoroute", "seed": 1},
        routing_stats_period_s=0.5,
    )  # fmt: skip
    assert original["runtime_env"]["env_vars"]["VOLTANA_ENABLED"] == "false"  # the input is not changed
    env = result["runtime_env"]["env_vars"]
    assert env["HF_HOME"] == "/models"
    for name in [n for n in os.environ if n.startswith("VOLTANA_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    loaded = load_config().config
    expected = VoltanaConfig(**{**ROLE_CONFIG, "enabled": True, "engine": {"role": "decode"}})
    assert loaded == expected
    assert result["deployment_config"] == {
        "max_ongoing_requests": 64,
        "num_replicas": 3,
        "request_router_config": {
            "request_router_class": ROUTERS[Phase.DECODE],
            "request_router_kwargs": {"policy": "ecoroute", "seed": 1},
            "request_routing_stats_period_s": 0.5,
        },
    }
    assert result["model_loading_config"] == {"model_id": "m"}


def test_the_llm_configs_own_replica_and_router_settings() -> None:
    kwargs = {"router_kwargs": {}, "routing_stats_period_s": 1.0}
    scaled = {"deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}}
    kept = voltana_llm_config(scaled, Phase.PREFILL, {}, num_replicas=None, **kwargs)
    assert "num_replicas" not in kept["deployment_config"]
    assert kept["deployment_config"]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    assert kept["runtime_env"]["env_vars"]["VOLTANA_ENGINE"] == '{"role": "prefill"}'
    with pytest.raises(ValueError, match="autoscaling_config"):
        voltana_llm_config(scaled, Phase.PREFILL, {}, num_replicas=2, **kwargs)
    routed = {"deployment_config": {"request_router_config": {"request_router_class": "x.Y"}}}
    with pytest.raises(ValueError, match="request_router_config"):
        voltana_llm_config(routed, Phase.DECODE, {}, num_replicas=None, **kwargs)
