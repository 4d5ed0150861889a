"""The emulator's ``GET /voltana/state`` is the payload the engine adapters and the Ray replicas publish
(:class:`~voltana.core.state_payload.InstanceStatePayload`): same keys, same version, over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.runtime_records import runtime_status
from voltana.adapters.sglang.state import read_state, state_path
from voltana.adapters.state_payload import StatePublisher
from voltana.adapters.vllm.state import engine_state_path, state_payload
from voltana.core.state_payload import STATE_PAYLOAD_VERSION, InstanceStatePayload
from voltana.core.types import EnergySource
from voltana.emulator.cluster import EmulatorCluster
from voltana.integrations.ray_serve.stats import ReplicaStats

ADAPTER_ONLY_KEYS = {"replicas"}
"""The adapters' HTTP side adds every data-parallel engine's own payload under ``replicas``."""


def _published(path: Path) -> None:
    publisher = StatePublisher(path).start()
    publisher.submit(InstanceStatePayload.from_status(runtime_status(), capture_sizes=(1, 2)))
    publisher.close(remove=False)  # writes what is pending first


def test_the_emulator_serves_the_adapters_payload(
    make_cluster: Callable[..., EmulatorCluster], client: httpx.Client, tmp_path: Path
) -> None:
    cluster = make_cluster("vllm", num_prefill=1, num_decode=1)
    states = [client.get(i.url + "/voltana/state").json() for i in cluster.instances]
    keys = set(InstanceStatePayload().to_json())
    for instance, state in zip(cluster.instances, states, strict=True):
        assert set(state) == keys
        assert state["version"] == STATE_PAYLOAD_VERSION
        parsed = InstanceStatePayload.from_json(state)
        assert parsed.role == instance.role and parsed.energy_source == EnergySource.SIMULATED.value
        assert parsed.sm_clock_mhz in parsed.allowed_clocks_mhz and parsed.clock_ceiling_mhz is None
        assert parsed.capture_sizes == tuple(instance.model.capture_sizes)
        assert parsed.kv_capacity_tokens == instance.model.kv_capacity_tokens > 0
        # no request served yet: all the energy so far is the simulated GPU's idle power between iterations
        assert parsed.idle_energy_joules > 0.0
        assert parsed.idle_energy_joules == pytest.approx(parsed.energy_joules, rel=0.05)

    for engine in ("vllm", "sglang"):
        (tmp_path / engine).mkdir()
    _published(engine_state_path(tmp_path / "vllm", 0) or tmp_path)
    _published(state_path(30000, None, tmp_path / "sglang"))
    vllm_state = state_payload(tmp_path / "vllm")
    sglang_state = read_state(30000, tmp_path / "sglang") or {}
    ray_state = ReplicaStats.from_state(states[1]).to_state()
    assert set(vllm_state) - ADAPTER_ONLY_KEYS == keys and set(sglang_state) - ADAPTER_ONLY_KEYS == keys
    assert set(ray_state) == keys
    assert vllm_state["version"] == sglang_state["version"] == ray_state["version"] == STATE_PAYLOAD_VERSION
    assert (vllm_state["clock_ceiling_mhz"], vllm_state["allowed_clocks_mhz"]) == (1305, [1005, 1305, 1410])
