"""Per-request accounting of the runtime against the rule applied iteration by iteration (the reference).

A real runtime (simulated A100, EcoFreq controller, energy meter) runs a churning decode stream: requests
join, sit out iterations (preempted), come back, and leave, over batches on both sides of the vectorised
attribution threshold. Each request's energy must equal the sum of its per-iteration shares from
``attribute_energy`` bit for bit, and its clock residency the sum of the iterations it ran in.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from tests.support.runtime_records import HookRecorder, StepClock
from voltana.adapters.runtime import InstanceRuntime
from voltana.core.attribution import NUMPY_FROM_BATCH, attribute_energy
from voltana.core.config import VoltanaConfig
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.plugins import get_plugin_manager


def _run_churn(runtime: InstanceRuntime, clock: StepClock, rng: random.Random) -> None:
    """200 iterations of a decode stream whose batch swings between 1 and ~2.5x the numpy threshold."""
    running: dict[str, int] = {}  # request id -> context tokens
    serial = 0
    for step in range(200):
        target = 1 + int((2.5 * NUMPY_FROM_BATCH) * abs(((step // 40) % 2) - (step % 40) / 40))
        while len(running) < target:
            running[f"q{serial}"] = rng.randint(0, 4000)
            serial += 1
        preempted = {rid for rid in running if rng.random() < 0.05}  # sit this iteration out
        batch = [rid for rid in running if rid not in preempted]
        if not batch:
            continue
        requests = [ScheduledRequest(rid, 1, running[rid], 1.0) for rid in batch]
        snapshot = BatchSnapshot.build(Phase.DECODE, requests, clock.now_s, iteration=step, instance_id="c")
        runtime.before_iteration(snapshot)
        clock.now_s += rng.uniform(0.005, 0.05)
        runtime.after_iteration([rid for rid in batch if running[rid] == 0])
        for rid in batch:
            running[rid] += 1
        leaving = [rid for rid in running if rng.random() < 1.0 / 30.0 or len(running) > target]
        for rid in leaving:
            del running[rid]
            runtime.request_finished(rid, input_tokens=1, output_tokens=1, finish_time_s=clock.now_s)
    for rid in running:
        runtime.request_finished(rid, input_tokens=1, output_tokens=1, finish_time_s=clock.now_s)


def test_request_energy_and_residency_equal_the_per_iteration_rule(recorder: HookRecorder) -> None:
    clock = StepClock(now_s=50.0)
    config = VoltanaConfig(enabled=True, hardware={"vendor": "simulated"})  # type: ignore[arg-type]
    runtime = InstanceRuntime.start(config, Phase.DECODE, "c")
    runtime._clock = clock
    applier, runtime._applier = runtime._applier, None  # applied clock = the decision: deterministic
    assert applier is not None
    applier.close()
    try:
        _run_churn(runtime, clock, random.Random(7))
    finally:
        runtime.close()

    energy_j: dict[str, float] = defaultdict(float)
    residency_s: dict[str, dict[int, float]] = defaultdict(dict)
    for record in recorder.iterations:
        assert record.energy_j is not None
        for rid, share_j in attribute_energy(record.snapshot, record.energy_j).items():
            energy_j[rid] += share_j
        for request in record.snapshot.requests:
            clocks = residency_s[request.request_id]
            clocks[record.applied_clock_mhz] = clocks.get(record.applied_clock_mhz, 0.0) + record.latency_s
    assert len({r.applied_clock_mhz for r in recorder.iterations}) > 1  # residency over several clocks
    sizes = [r.snapshot.batch_size for r in recorder.iterations]
    assert min(sizes) < NUMPY_FROM_BATCH <= max(sizes)  # both attribution paths ran
    finished = {r.request_id: r for r in recorder.requests}
    assert set(finished) == set(energy_j) and len(finished) == len(recorder.requests)
    for rid, request in finished.items():
        assert request.energy_j == energy_j[rid]  # same shares, added in the same order
        assert request.clock_residency_s.keys() == residency_s[rid].keys()
        for clock_mhz, seconds in residency_s[rid].items():
            assert request.clock_residency_s[clock_mhz] == pytest.approx(seconds, rel=1e-9, abs=1e-12)
    assert sum(r.energy_j for r in finished.values()) == pytest.approx(
        sum(r.energy_j or 0.0 for r in recorder.iterations), rel=1e-12
    )


def test_forgotten_request_coming_back_starts_a_fresh_account(recorder: HookRecorder) -> None:
    clock = StepClock(now_s=50.0)
    runtime = InstanceRuntime(
        instance_id="c", phase=Phase.DECODE, hook=get_plugin_manager().hook, clock=clock
    )
    for step in range(3):
        snapshot = BatchSnapshot.build(
            Phase.DECODE, [ScheduledRequest("a", 1, 10 + step, 1.0)], clock.now_s, iteration=step
        )
        runtime.before_iteration(snapshot)
        clock.now_s += 0.01
        runtime.after_iteration()
        if step == 0:
            runtime.forget_request("a")  # e.g. aborted and re-admitted under the same id
    record = runtime.request_finished("a", input_tokens=1, output_tokens=3, finish_time_s=clock.now_s)
    assert record is not None
    assert sum(record.clock_residency_s.values()) == pytest.approx(0.02)
