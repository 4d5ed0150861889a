"""The router's view: a leader scheduler publishes voltana's state; SGLang's HTTP server serves it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from sglang.srt.disaggregation.utils import DisaggregationMode

from tests.engines.sglang.sglang_objects import (
    decode_batch,
    extend_batch,
    make_req,
    scheduler_shell,
    served_http_app,
)
from voltana.adapters.sglang import binding, plugin, state
from voltana.adapters.sglang.snapshot import snapshot_from_batch
from voltana.core import state_payload
from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase

pytestmark = pytest.mark.sglang


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "state_dir", lambda: tmp_path)
    return tmp_path


@pytest.fixture
def sglang_http(state_dir: Path) -> Iterator[str]:
    """SGLang's own FastAPI app, with voltana's route added by the launch hook, on a loopback port."""
    from sglang.srt.entrypoints.http_server import app

    with served_http_app(app, plugin._before_http_launch) as (url, _):
        yield url


def wait_for_clock_change(made: Any, before: int | None, timeout_s: float = 3.0) -> int | None:
    """The runtime's applied clock once the applier thread moved it off ``before`` (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while made.runtime.status().sm_clock_mhz == before and time.monotonic() < deadline:
        time.sleep(0.01)
    clock: int | None = made.runtime.status().sm_clock_mhz
    return clock


def test_leader_binding_runs_a_runtime_and_publishes_state(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin's own path: config -> simulated GPU -> EcoFreq controller -> applier -> published clock."""
    monkeypatch.setenv("VOLTANA_HARDWARE__VENDOR", "simulated")
    scheduler = scheduler_shell(DisaggregationMode.DECODE, port=31234)
    made = plugin.make_binding(VoltanaConfig(enabled=True), scheduler)
    assert made is not None
    try:
        assert made.instance_id == "127.0.0.1:31234"
        assert made.runtime.phase is Phase.DECODE and not made.runtime.monitor_only
        assert made.capture_sizes == (1, 2, 4, 8, 16)
        published = state.read_state(31234, state_dir)
        assert published is not None
        assert published["instance_id"] == "127.0.0.1:31234" and published["role"] == "decode"
        assert published["capture_sizes"] == [1, 2, 4, 8, 16] and published["policy"] == "ecofreq"

        batch = decode_batch([make_req(f"d{i}", 200, output_tokens=3) for i in range(8)])
        initial = made.runtime.status().sm_clock_mhz  # the GPU's max before voltana acts
        assert made.before(scheduler, batch)
        result = object()
        made.launched(result)
        made.processed(scheduler, batch, result, [])
        # 8 short decodes meet a 50 ms ITL far below the max clock: EcoFreq lowers it, the applier applies it.
        clock = wait_for_clock_change(made, initial)
        assert clock is not None and initial is not None and clock < initial
        expected = (1, clock)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            published = state.read_state(31234, state_dir) or {}
            if (published.get("iterations"), published.get("sm_clock_mhz")) == expected:
                break
            time.sleep(0.02)
        assert (published.get("iterations"), published.get("sm_clock_mhz")) == expected
    finally:
        made.runtime.close()


def test_non_leader_rank_gets_no_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "placement_of", lambda s: binding.Placement(tp_rank=3, tp_size=4))
    assert (
        plugin.make_binding(VoltanaConfig(enabled=True), scheduler_shell(DisaggregationMode.DECODE)) is None
    )


def test_leader_drives_all_gpus_of_its_tensor_parallel_group() -> None:
    assert binding.Placement(tp_size=4, gpu_id=4).instance_gpu_ids == [4, 5, 6, 7]
    assert binding.Placement(tp_size=2, gpu_id=1, gpu_id_step=2).instance_gpu_ids == [1, 3]
    assert binding.Placement(tp_size=8, nnodes=2).instance_gpu_ids == [0, 1, 2, 3]
    assert binding.Placement(port=30001, dp_rank=2).instance_id == "127.0.0.1:30001#dp2"


def test_sglang_http_server_serves_voltana_state(sglang_http: str, state_dir: Path) -> None:
    port = int(sglang_http.rsplit(":", 1)[1])
    answer = httpx.get(sglang_http + state.STATE_ROUTE, timeout=5)
    assert answer.status_code == 200
    assert answer.json() == {"sm_clock_mhz": None, "capture_sizes": []}  # leader not up yet

    state.write_state(
        state.state_path(port, None, state_dir), {"sm_clock_mhz": 1110, "capture_sizes": [1, 2, 4]}
    )
    state.write_state(
        state.state_path(port, 1, state_dir), {"sm_clock_mhz": 1410, "capture_sizes": [1, 2, 4]}
    )
    served = httpx.get(sglang_http + state.STATE_ROUTE, timeout=5).json()
    assert served["sm_clock_mhz"] == 1110 and served["capture_sizes"] == [1, 2, 4]
    assert [r["sm_clock_mhz"] for r in served["replicas"]] == [1110, 1410]


def test_state_publisher_writes_only_changes_and_cleans_up(state_dir: Path) -> None:
    values = {"sm_clock_mhz": 1005}
    path = state.state_path(30000, None, state_dir)
    publisher = state.StatePublisher(
        path, source=lambda: state.InstanceStatePayload(sm_clock_mhz=values["sm_clock_mhz"]), interval_s=0.01
    ).start()
    first = path.stat().st_mtime_ns
    time.sleep(0.05)
    assert path.stat().st_mtime_ns == first  # unchanged state is not rewritten
    values["sm_clock_mhz"] = 1410
    deadline = time.monotonic() + 2
    while state.read_state(30000, state_dir)["sm_clock_mhz"] != 1410 and time.monotonic() < deadline:  # type: ignore[index]
        time.sleep(0.01)
    assert state.read_state(30000, state_dir)["sm_clock_mhz"] == 1410  # type: ignore[index]
    publisher.close()
    assert not path.exists()


def test_binding_state_reports_queues_after_an_iteration(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOLTANA_HARDWARE__VENDOR", "simulated")
    scheduler = scheduler_shell(
        DisaggregationMode.DECODE,
        prealloc=[make_req("pre", 10)],
        transfer=[make_req("t1", 10), make_req("t2", 9)],
    )
    made = plugin.make_binding(VoltanaConfig(enabled=True), scheduler)
    assert made is not None
    try:
        batch = decode_batch([make_req("d", 12, output_tokens=2)])
        assert made.before(scheduler, batch)
        result = object()
        made.launched(result)
        made.processed(scheduler, batch, result, [])
        snapshot = state.binding_state(made)
        assert snapshot.queues == {
            "waiting": 0,
            "bootstrap": 0,
            "inflight": 0,
            "prealloc": 1,
            "transfer": 2,
        }
        assert snapshot.iterations == 1 and snapshot.version == state_payload.STATE_PAYLOAD_VERSION
        assert state_payload.InstanceStatePayload.from_json(snapshot.to_json()) == snapshot
    finally:
        made.runtime.close()


def test_placement_comes_from_sglangs_runtime_context() -> None:
    from sglang.srt.runtime_context import get_parallel

    scheduler = scheduler_shell(DisaggregationMode.DECODE, port=30005)
    scheduler.server_args.tp_size = 2
    with get_parallel().override(tp_rank=1, pp_rank=0, tp_size=2):
        assert not binding.placement_of(scheduler).is_leader
    with get_parallel().override(tp_rank=0, pp_rank=0, tp_size=2, dp_rank=3):
        place = binding.placement_of(scheduler)
        assert place.is_leader and place.instance_id == "127.0.0.1:30005#dp3"
        assert place.instance_gpu_ids == [0, 1]
    # Nothing published and two GPUs: this process cannot know it leads, so it does not act.
    assert binding.placement_of(scheduler).tp_rank == -1
    scheduler.server_args.tp_size = 1
    assert binding.placement_of(scheduler).is_leader


def test_driver_refusal_on_the_plugin_path_gives_one_message_and_monitor_only(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, voltana_errors: Any
) -> None:
    from voltana.hardware.errors import NoPermissionError
    from voltana.hardware.simulated import SimulatedGpu

    monkeypatch.setenv("VOLTANA_HARDWARE__VENDOR", "simulated")
    refuse = NoPermissionError("locking clocks needs root or CAP_SYS_ADMIN")
    with mock.patch.object(SimulatedGpu, "lock_clock_mhz", autospec=True, side_effect=refuse):
        scheduler = scheduler_shell(DisaggregationMode.PREFILL, port=31235)
        made = plugin.make_binding(VoltanaConfig(enabled=True, policy={"clock": "static-min"}), scheduler)
        assert made is not None
        try:
            for i in range(3):
                batch = extend_batch([make_req(f"p{i}", 64)])
                made.before(scheduler, batch)
                result = object()
                made.launched(result)
                time.sleep(0.05)  # the applier thread meets the driver's refusal
                made.processed(scheduler, batch, result, [f"p{i}"])
            status = made.runtime.status()
            assert status.monitor_only and "CAP_SYS_ADMIN" in status.monitor_only_reason
            assert status.iterations == 3  # still measured
            [error] = voltana_errors()
            assert "CAP_SYS_ADMIN" in error.getMessage()
        finally:
            made.runtime.close()


def test_configured_role_overrides_sglangs_mode(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTANA_HARDWARE__VENDOR", "simulated")
    scheduler = scheduler_shell(DisaggregationMode.NULL, port=31236)
    made = plugin.make_binding(VoltanaConfig(enabled=True, engine={"role": "decode"}), scheduler)
    assert made is not None
    try:
        assert made.runtime.phase is Phase.DECODE and made.disaggregation_mode == "decode"
        snap = snapshot_from_batch(
            extend_batch([make_req("x", 32)]),
            scheduler,
            disaggregation_mode=made.disaggregation_mode,
            now_s=0.0,
        )
        assert snap is not None and snap.phase is Phase.DECODE
    finally:
        made.runtime.close()
