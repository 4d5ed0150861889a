"""The vLLM adapter's instance state: engine-side files, the /metrics collector and /voltana/state payload."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from voltana.adapters.state_payload import StatePublisher
from voltana.adapters.vllm.state import VoltanaStateCollector, engine_state_path, read_states, state_payload
from voltana.core.state_payload import InstanceStatePayload

prometheus_client = pytest.importorskip("prometheus_client")


def _state(engine: int, clock: int | None, **extra: Any) -> InstanceStatePayload:
    values: dict[str, Any] = {
        "engine": engine,
        "instance_id": f"vllm-decode-{engine}-1",
        "role": "decode",
        "policy": "ecofreq",
        "monitor_only": False,
        "sm_clock_mhz": clock,
        "num_requests_running": 3,
        "num_requests_waiting": 1,
        "kv_tokens": 900,
        "kv_capacity_tokens": 4096,
        "capture_sizes": (1, 2, 4, 8),
        "iterations": 10,
        "hook_seconds": 0.002,
        "energy_source": "measured",
        "energy_joules": 12.5,
        "idle_energy_joules": 2.0,
        "updated_at_s": time.time(),
    }
    values.update(extra)
    return InstanceStatePayload(**values)


def _publish(directory: Path, state: InstanceStatePayload) -> None:
    publisher = StatePublisher(engine_state_path(directory, state.engine)).start()
    publisher.submit(state)
    publisher.close(remove=False)  # writes what is pending first


def test_engine_publisher_writes_atomically_and_throttles(tmp_path: Path) -> None:
    publisher = StatePublisher(engine_state_path(tmp_path, 1)).start()
    assert publisher.due()
    publisher.submit(_state(1, 1200))
    assert not publisher.due()  # within PUBLISH_INTERVAL_S of the last submit
    assert publisher.flush()
    assert [s["sm_clock_mhz"] for s in read_states(tmp_path)] == [1200]
    assert [p.name for p in tmp_path.iterdir()] == ["engine-1.json"]  # no temp file left behind
    publisher.close(remove=False)
    assert not StatePublisher(engine_state_path(None, 0)).start().due()  # no directory: publishing is off


def test_stale_and_broken_files_are_skipped(tmp_path: Path) -> None:
    stale = _state(0, 1000, updated_at_s=time.time() - 3600).to_json()
    (tmp_path / "engine-0.json").write_text(json.dumps(stale))
    (tmp_path / "engine-1.json").write_text("{not json")
    (tmp_path / "engine-2.json").write_text(json.dumps(_state(2, 1100).to_json()))
    assert [s["engine"] for s in read_states(tmp_path)] == [2]


def test_collector_exposes_voltana_metrics(tmp_path: Path) -> None:
    for engine, clock in ((0, 1410), (1, None)):
        _publish(tmp_path, _state(engine, clock))
    registry = prometheus_client.CollectorRegistry()
    registry.register(VoltanaStateCollector(tmp_path))
    text = prometheus_client.generate_latest(registry).decode()
    assert 'voltana:sm_clock_mhz{engine="0"} 1410.0' in text
    assert 'voltana:sm_clock_mhz{engine="1"}' not in text  # unknown clock: no sample
    assert 'voltana:kv_tokens{engine="1"} 900.0' in text
    assert 'voltana:iterations_total{engine="0"} 10.0' in text
    assert 'voltana:energy_joules_total{engine="0"} 12.5' in text
    assert 'voltana:idle_energy_joules_total{engine="0"} 2.0' in text
    assert (
        'voltana:instance_info{capture_sizes="1,2,4,8",energy_source="measured",engine="0",'
        'instance_id="vllm-decode-0-1",policy="ecofreq",role="decode"} 1.0'
    ) in text


def test_state_payload_for_the_router(tmp_path: Path) -> None:
    for engine in (1, 0):
        _publish(tmp_path, _state(engine, 1005 + engine, clock_ceiling_mhz=1065))
    payload = state_payload(tmp_path)
    assert payload["sm_clock_mhz"] == 1005 and payload["capture_sizes"] == [1, 2, 4, 8]
    assert payload["clock_ceiling_mhz"] == 1065  # the power-budget ceiling in force, like voltana emulate
    assert payload["hook_time_per_iteration_s"] == pytest.approx(0.0002)
    assert [r["engine"] for r in payload["replicas"]] == [0, 1]
    empty = tmp_path / "empty"
    os.mkdir(empty)
    assert state_payload(empty)["sm_clock_mhz"] is None


def test_request_energy_log_for_the_router(tmp_path: Path) -> None:
    from voltana.adapters.vllm import state

    log = state.RequestEnergyLog(tmp_path, engine_index=0)
    # vLLM's ids embed the client's X-Request-Id: cmpl-<id>-<prompt index>-<suffix>, chatcmpl-<id>-<suffix>
    log.add("cmpl-voltana-abc-0-1f2e3d4c", "prefill", 1.5)
    log.add("cmpl-voltana-abc-1-99aa88bb", "prefill", 0.5)  # a second prompt of the same request
    log.add("cmpl-voltana-abcdef-0-00000000", "prefill", 9.0)  # another request whose id extends it
    assert state.request_energy(tmp_path, "voltana-abc") is None  # buffered, not yet published
    log.flush()
    assert state.request_energy(tmp_path, "voltana-abc") == {
        "request_id": "voltana-abc",
        "phase": "prefill",
        "energy_j": 2.0,
    }
    assert state.request_energy(tmp_path, "voltana-abcdef")["energy_j"] == 9.0  # type: ignore[index]
    assert state.request_energy(tmp_path, "unknown") is None
    other = state.RequestEnergyLog(tmp_path, engine_index=1)  # a second data-parallel engine
    other.add("chatcmpl-xyz-5e5e5e5e", "decode", 3.25)
    other.flush()
    assert state.request_energy(tmp_path, "xyz")["energy_j"] == 3.25  # type: ignore[index]
    assert state.RequestEnergyLog(None, 0).add("a", "decode", 1.0) is None  # no directory: nothing kept


def test_request_energy_log_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from voltana.adapters.vllm import state

    monkeypatch.setattr(state, "REQUEST_LINES_KEPT", 2)
    log = state.RequestEnergyLog(tmp_path, engine_index=0)
    for i in range(5):
        log.add(f"r{i}", "decode", float(i))
        log.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests-0.jsonl", "requests-0.jsonl.1"]
    assert state.request_energy(tmp_path, "r4")["energy_j"] == 4.0  # type: ignore[index]
    assert state.request_energy(tmp_path, "r0") is None  # rotated out twice


def test_request_energy_matches_the_client_id_exactly(tmp_path: Path) -> None:
    """QA report: ``job7`` got job7's and job7-retry's joules (510 J) by prefix. vLLM's id forms:
    ``cmpl-<id>-<prompt>-<8 hex>``, ``chatcmpl-<id>[_<n>]-<8 hex>`` (no suffix when randomization is off)."""

    from voltana.adapters.vllm import state

    log = state.RequestEnergyLog(tmp_path, engine_index=0)
    log.add("cmpl-job7-0-1a2b3c4d", "decode", 100.0)
    log.add("cmpl-job7-retry-0-5e6f7a8b", "decode", 410.0)
    log.add("cmpl-job7-0-0-99999999", "decode", 7.0)  # client id "job7-0"
    log.add("chatcmpl-job8-retry-abcdef01", "decode", 20.0)
    log.add("chatcmpl-job8", "decode", 2.0)  # VLLM_DISABLE_REQUEST_ID_RANDOMIZATION
    log.flush()
    assert state.request_energy(tmp_path, "job7")["energy_j"] == 100.0  # type: ignore[index]
    assert state.request_energy(tmp_path, "job7-retry")["energy_j"] == 410.0  # type: ignore[index]
    assert state.request_energy(tmp_path, "job7-0")["energy_j"] == 7.0  # type: ignore[index]
    assert state.request_energy(tmp_path, "job8")["energy_j"] == 2.0  # type: ignore[index]
    assert state.request_energy(tmp_path, "job") is None


def _published(tmp_path: Path, energy_source: str) -> None:
    _publish(tmp_path, _state(0, 1410, energy_source=energy_source))


def test_request_record_route_reads_off_the_loop_and_says_not_measured(tmp_path: Path) -> None:
    """QA report: the route read every file on vLLM's API server loop, and answered "not yet" forever when
    no energy was measured (the router waited 0.3 s more per answer)."""
    import asyncio
    import threading

    from voltana.adapters.vllm import state

    threads: list[int] = []

    class Recording(state.RequestEnergyIndex):
        def answer(self, client_id: str) -> Any:
            threads.append(threading.get_ident())
            return super().answer(client_id)

    index = Recording(tmp_path)
    _published(tmp_path, "unknown")  # voltana enabled, no energy meter
    status, body = asyncio.run(state.request_record(index, "x"))
    assert (status, body["reason"]) == (404, "not_measured")
    _published(tmp_path, "measured")
    status, body = asyncio.run(state.request_record(index, "x"))
    assert (status, body["reason"]) == (404, "not_yet")
    log = state.RequestEnergyLog(tmp_path, engine_index=0)
    log.add("cmpl-x-0-0123abcd", "prefill", 1.5)
    log.flush()  # appended after the index read the file: read incrementally
    assert asyncio.run(state.request_record(index, "x")) == (
        200,
        {"request_id": "x", "phase": "prefill", "energy_j": 1.5},
    )
    assert threads and threading.get_ident() not in threads  # every lookup ran in a worker thread
