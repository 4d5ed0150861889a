"""A Ray Serve LLM vLLM replica publishes voltana's engine state through ``record_routing_stats``.

The real vLLM CPU engine runs in-process as in a Ray Serve LLM replica
(``tests/support/ray_llm_replica_probe``) with the environment ``voltana_llm_config`` gives the decode
deployment; the server's routing stats are read back the way the voltana request routers read them. Ray
Serve LLM's ``LLMServer`` itself is not importable here (no Ray next to vLLM): the probe's base class stands
in for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.ray_llm_replica_probe import BASE_ROUTING_STATS
from tests.support.vllm_servers import CPU_ENGINE_ENV
from voltana.core.types import Phase
from voltana.hardware.simulated import performance_model
from voltana.integrations.ray_serve.stats import ReplicaStats, instance_state
from voltana.integrations.ray_serve.vllm_replica import voltana_llm_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def probe(tiny_model_dir: Path) -> dict[str, Any]:
    llm_config = voltana_llm_config(
        {"model_loading_config": {"model_id": "tiny"}, "runtime_env": {"env_vars": {"KEEP": "1"}}},
        Phase.DECODE,
        {"hardware": {"vendor": "simulated"}, "policy": {"clock": "ecofreq"}},
        num_replicas=2,
        router_kwargs={"policy": "ecoroute"},
        routing_stats_period_s=0.5,
    )
    replica_env = llm_config["runtime_env"]["env_vars"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLTANA_", "_VOLTANA_"))}
    env.update(CPU_ENGINE_ENV)
    env.update(replica_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.ray_llm_replica_probe", str(tiny_model_dir)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_replica_exports_its_state_directory_and_serves(probe: dict[str, Any]) -> None:
    assert probe["state_dir_exported"]  # voltana's plugin loaded in the replica process (AsyncEngineArgs)
    assert probe["generated"] == [16, 16, 16, 16]


def test_routing_stats_carry_the_engines_voltana_state_next_to_the_base_stats(probe: dict[str, Any]) -> None:
    after = probe["after"]
    assert {k: after[k] for k in BASE_ROUTING_STATS} == BASE_ROUTING_STATS  # the base class's stats kept
    state = after["voltana"]
    # Published by the EngineCore child's scheduler hook (its pid in the id), read in the replica process.
    assert state["instance_id"].startswith("vllm-decode-0-")
    assert not state["instance_id"].endswith(f"-{probe['pid']}")
    assert state["role"] == "decode" and state["policy"] == "ecofreq" and state["monitor_only"] is False
    model = performance_model("a100-80gb", "llama-3.1-8b")
    assert state["sm_clock_mhz"] in model.supported_clocks_mhz
    assert state["capture_sizes"] == []  # eager CPU engine: no CUDA graphs
    assert state["iterations"] >= 16  # 4 requests x 16 tokens, batched
    assert state["kv_capacity_tokens"] > 0
    assert state["energy_source"] == "simulated" and state["energy_joules"] > 0


def test_the_router_side_reads_the_published_state(probe: dict[str, Any]) -> None:
    stats = ReplicaStats.from_routing_stats(probe["after"])
    assert stats is not None
    state = probe["after"]["voltana"]
    view = instance_state("replica-1", Phase.DECODE, stats, inflight=0, now_s=time.time(), stale_after_s=60.0)
    assert view.sm_clock_mhz == state["sm_clock_mhz"]
    assert view.kv_capacity_tokens == state["kv_capacity_tokens"]
    assert stats.energy_j == pytest.approx(state["energy_joules"])
    assert stats.iterations == state["iterations"]


def test_before_the_first_iteration_only_the_base_stats_or_an_idle_state(probe: dict[str, Any]) -> None:
    before = probe["before"]
    assert {k: before[k] for k in BASE_ROUTING_STATS} == BASE_ROUTING_STATS
    if "voltana" in before:  # the engine may have published while warming up
        assert before["voltana"]["num_requests_running"] == 0
