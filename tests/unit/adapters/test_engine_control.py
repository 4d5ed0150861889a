"""The vLLM/SGLang side of the profiling API: the HTTP process's backend and the engine's channel, on a real
:class:`InstanceRuntime` (simulated GPU, EcoFreq controller, clock applier), talking through a directory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voltana.adapters.engine_control import EngineControlChannel, FileControlBackend
from voltana.adapters.runtime import InstanceRuntime
from voltana.adapters.state_payload import InstanceStatePayload
from voltana.core.config import VoltanaConfig
from voltana.core.types import BatchSnapshot, DecisionReason, Phase, ScheduledRequest
from voltana.profiler.ceiling_api import CEILING_LEASE_ID, handle_ceiling
from voltana.profiler.engine_api import ClockPin, handle_pin

ALLOWED = [1065, 1245, 1410]
TOKEN = "tok"


def _snapshot(i: int) -> BatchSnapshot:
    reqs = [ScheduledRequest(f"r{k}", 1, 200 + k, 0.0) for k in range(4)]
    return BatchSnapshot.build(Phase.DECODE, reqs, 1000.0 + i, iteration=i)


def _iterate(runtime: InstanceRuntime, count: int, start: int = 0) -> list[int]:
    """Run ``count`` iterations; returns each one's applied clock (read back after the applier applied)."""
    applied = []
    for i in range(start, start + count):
        runtime.before_iteration(_snapshot(i))
        assert runtime._applier is not None and runtime._applier.wait_applied(2.0)
        record = runtime.after_iteration()
        assert record is not None
        applied.append(record.applied_clock_mhz)
    return applied


@pytest.fixture
def runtime() -> Iterator[InstanceRuntime]:
    config = VoltanaConfig(enabled=True, hardware={"vendor": "simulated"}, clocks={"allowed_mhz": ALLOWED})
    made = InstanceRuntime.start(config, Phase.DECODE, "i0")
    yield made
    made.close()


def test_pin_goes_through_the_runtime_and_lapses(runtime: InstanceRuntime, tmp_path: Path) -> None:
    channel = EngineControlChannel(runtime, tmp_path, tmp_path / "engine-0", capacity=64)
    backend = FileControlBackend(tmp_path, tmp_path / "engine-0")
    assert backend.allowed_clocks_mhz() == ()  # nothing published yet: no pin is accepted
    status, body = handle_pin(backend, TOKEN, f"Bearer {TOKEN}", {"clock_mhz": 1065, "lease_id": "a"})
    assert status == 422
    channel.tick()
    assert backend.allowed_clocks_mhz() == tuple(ALLOWED) and backend.control_problem() == ""

    status, body = handle_pin(backend, TOKEN, f"Bearer {TOKEN}", {"clock_mhz": 1065, "lease_id": "a"})
    assert status == 200 and body["pinned_mhz"] == 1065 and body["engine_pinned_mhz"] is None
    channel.tick()  # the engine takes the pin up
    assert runtime.pinned_clock_mhz == 1065 and backend.engine_pinned_mhz() == 1065
    assert _iterate(runtime, 3) == [1065, 1065, 1065]  # applied through the applier and read back
    channel.tick()
    page = backend.iterations_since(0, 100)
    assert [(r["pinned_mhz"], r["clock_mhz"], r["reason"]) for r in page.records] == [
        (1065, 1065, str(DecisionReason.PINNED))
    ] * 3
    assert [r["seq"] for r in page.records] == [1, 2, 3] and page.next == 3

    backend.set_pin(ClockPin(1065, "a", time.time() - 1.0))  # the lease lapsed (the profiler died)
    channel.tick()
    assert runtime.pinned_clock_mhz is None and backend.engine_pinned_mhz() is None
    runtime.before_iteration(_snapshot(9))
    record = runtime.after_iteration()
    assert record is not None and record.decision.reason != DecisionReason.PINNED  # the policy decides again


def test_ring_on_disk_stays_bounded(runtime: InstanceRuntime, tmp_path: Path) -> None:
    channel = EngineControlChannel(runtime, tmp_path, tmp_path / "engine-0", capacity=8)
    backend = FileControlBackend(tmp_path, tmp_path / "engine-0")
    for batch in range(5):
        _iterate(runtime, 5, start=5 * batch)
        channel.tick()
    page = backend.iterations_since(0, 100)
    seqs = [r["seq"] for r in page.records]
    assert len(seqs) <= 8 and seqs == list(range(seqs[0], 26)) and page.dropped == seqs[0] - 1
    assert backend.iterations_since(25, 100).records == []


def test_monitor_only_engine_refuses_pins(tmp_path: Path) -> None:
    config = VoltanaConfig(enabled=True, hardware={"vendor": "nvidia"})  # no NVIDIA driver here
    runtime = InstanceRuntime.start(config, Phase.DECODE, "i0")
    try:
        channel = EngineControlChannel(runtime, tmp_path, tmp_path / "engine-0", capacity=8)
        channel.tick()
        backend = FileControlBackend(tmp_path, tmp_path / "engine-0")
        assert backend.allowed_clocks_mhz() == () and backend.control_problem().startswith("monitor-only")
        with pytest.raises(ValueError, match="clock control is off"):
            runtime.pin_clock(1410)
    finally:
        runtime.close()


def test_a_power_budget_ceiling_holds_the_engine_and_lapses(tmp_path: Path) -> None:
    config = VoltanaConfig(
        enabled=True,
        hardware={"vendor": "simulated"},
        clocks={"allowed_mhz": ALLOWED},
        policy={"clock": "static-max"},  # wants 1410 MHz every iteration: only the ceiling holds it lower
    )
    runtime = InstanceRuntime.start(config, Phase.DECODE, "i0")
    try:
        _ceiling_round_trip(runtime, tmp_path)
    finally:
        runtime.close()


def _ceiling_round_trip(runtime: InstanceRuntime, tmp_path: Path) -> None:
    channel = EngineControlChannel(runtime, tmp_path, tmp_path / "engine-0", capacity=64)
    backend = FileControlBackend(tmp_path, tmp_path / "engine-0")
    status, body = handle_ceiling(backend, TOKEN, "Bearer wrong", {"ceiling_mhz": 1065})
    assert status == 401 and "/voltana/ceiling" in body["error"]["message"]
    status, body = handle_ceiling(backend, None, f"Bearer {TOKEN}", {"ceiling_mhz": 1065})
    message = body["error"]["message"]  # names the ceiling route, not clock pinning
    assert status == 403 and "/voltana/ceiling" in message and "clock pinning" not in message
    assert handle_ceiling(backend, TOKEN, f"Bearer {TOKEN}", {"ceiling_mhz": -5})[0] == 422
    assert _iterate(runtime, 2) == [1410, 1410]
    status, body = handle_ceiling(backend, TOKEN, f"Bearer {TOKEN}", {"ceiling_mhz": 1300, "lease_s": 30})
    assert status == 200 and body["ceiling_mhz"] == 1300
    channel.tick()  # the engine takes the ceiling up
    assert runtime.clock_ceiling_mhz == 1300
    # vLLM's and SGLang's /voltana/state report the ceiling in force (the payload built from the runtime).
    assert InstanceStatePayload.from_status(runtime.status()).to_json()["clock_ceiling_mhz"] == 1300
    assert _iterate(runtime, 3, start=2) == [1245] * 3  # the highest allowed clock under 1300, read back
    channel.tick()
    reasons = {r["reason"] for r in backend.iterations_since(2, 100).records}
    assert reasons == {str(DecisionReason.POWER_CEILING)}
    backend.set_ceiling(ClockPin(1300, CEILING_LEASE_ID, time.time() - 1.0))  # the router stopped renewing it
    channel.tick()
    assert runtime.clock_ceiling_mhz is None
    assert InstanceStatePayload.from_status(runtime.status()).clock_ceiling_mhz is None
    assert _iterate(runtime, 1, start=9) == [1410]
