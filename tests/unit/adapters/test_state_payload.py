"""The one ``/voltana/state`` payload both adapters publish, and the threaded publisher that writes it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.support.runtime_records import runtime_status
from voltana.adapters.state_payload import StatePublisher
from voltana.core.state_payload import STATE_PAYLOAD_VERSION, InstanceStatePayload
from voltana.integrations.ray_serve.stats import ReplicaStats


def test_payload_round_trips_through_json() -> None:
    payload = InstanceStatePayload.from_status(
        runtime_status(),
        engine=1,
        capture_sizes=(1, 2, 4),
        num_requests_running=3,
        kv_tokens=900,
        queues={"prealloc": 1},
    )
    data = json.loads(json.dumps(payload.to_json()))
    assert data["version"] == STATE_PAYLOAD_VERSION
    assert data["hook_time_per_iteration_s"] == pytest.approx(0.0005)
    assert data["energy_source"] == "measured" and data["capture_sizes"] == [1, 2, 4]
    assert data["clock_ceiling_mhz"] == 1305 and data["allowed_clocks_mhz"] == [1005, 1305, 1410]
    assert InstanceStatePayload.from_json(data) == payload
    assert payload.num_requests_waiting is None  # not reported: null, never a guess


def test_a_hook_that_broke_is_published_monitor_only() -> None:
    payload = InstanceStatePayload.from_status(runtime_status(), broken="hook failed: KeyError")
    assert payload.monitor_only and payload.monitor_only_reason == "hook failed: KeyError"


def test_from_json_ignores_unknown_keys_and_refuses_newer_versions() -> None:
    parsed = InstanceStatePayload.from_json({"sm_clock_mhz": 1005, "from_the_future": 1, "monitor_only": 0})
    assert parsed.sm_clock_mhz == 1005 and parsed.monitor_only is False
    with pytest.raises(ValueError, match="version"):
        InstanceStatePayload.from_json({"version": STATE_PAYLOAD_VERSION + 1})
    with pytest.raises(ValueError, match="bad state payload"):
        InstanceStatePayload.from_json({"capture_sizes": ["x"]})


def test_the_ray_integration_reads_the_payload() -> None:
    payload = InstanceStatePayload.from_status(
        runtime_status(1200), capture_sizes=(1, 8), num_requests_running=2
    )
    stats = ReplicaStats.from_state(payload.to_json())
    assert (stats.sm_clock_mhz, stats.capture_sizes, stats.num_running) == (1200, (1, 8), 2)
    assert stats.energy_j == 12.5


def test_publisher_writes_off_the_callers_thread_latest_wins(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    writer_threads: list[str] = []
    gate = threading.Event()

    def after_write() -> None:
        writer_threads.append(threading.current_thread().name)
        gate.wait(5)  # a slow disk: the publisher is stuck writing

    publisher = StatePublisher(path, after_write=after_write, interval_s=0.01).start()
    publisher.submit(InstanceStatePayload(sm_clock_mhz=1000))
    deadline = time.monotonic() + 5
    while not writer_threads and time.monotonic() < deadline:  # the thread is now stuck in after_write
        time.sleep(0.005)
    for clock in (1100, 1200, 1300):  # while the thread is stuck: submit returns, nothing queues up
        publisher.submit(InstanceStatePayload(sm_clock_mhz=clock))
    gate.set()
    assert publisher.flush()
    assert InstanceStatePayload.from_json(json.loads(path.read_text())).sm_clock_mhz == 1300
    assert set(writer_threads) == {"voltana-state"}
    assert publisher.writes == 2  # 1000 and the latest: the ones in between were replaced
    publisher.close()
    assert not path.exists()


def test_publisher_skips_unchanged_payloads_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    publisher = StatePublisher(path, interval_s=0.01).start()
    publisher.submit(InstanceStatePayload(sm_clock_mhz=1005, updated_at_s=1.0))
    assert publisher.flush()
    publisher.submit(InstanceStatePayload(sm_clock_mhz=1005, updated_at_s=2.0))  # only the stamp differs
    assert publisher.flush()
    assert publisher.writes == 1
    publisher.submit(InstanceStatePayload(sm_clock_mhz=1410))
    publisher.close(remove=False)  # writes what is pending, then the thread ends
    assert not publisher._thread.is_alive()
    assert json.loads(path.read_text())["sm_clock_mhz"] == 1410
    publisher.close()  # idempotent
    publisher.submit(InstanceStatePayload())  # after close: dropped, never raises


def test_publisher_without_a_path_is_off(tmp_path: Path) -> None:
    publisher = StatePublisher(None).start()
    assert not publisher.due()
    publisher.submit(InstanceStatePayload(sm_clock_mhz=1005))
    publisher.close()
    assert list(tmp_path.iterdir()) == []


def test_publisher_survives_a_failing_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = iter([RuntimeError("scheduler gone")])

    def source() -> InstanceStatePayload:
        error = next(calls, None)
        if error is not None:
            raise error
        return InstanceStatePayload(sm_clock_mhz=1110)

    path = tmp_path / "state.json"
    publisher = StatePublisher(path, source=source, interval_s=0.01).start()
    assert "scheduler gone" in caplog.text
    publisher.close(remove=False)
    assert json.loads(path.read_text())["sm_clock_mhz"] == 1110
