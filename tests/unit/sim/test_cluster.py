"""The P/D cluster simulation driven by the real controllers and routing hooks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from voltana.core.hookspecs import hookimpl
from voltana.core.types import IterationRecord, Phase
from voltana.hardware.simulated import PerformanceModel
from voltana.plugins import get_plugin_manager
from voltana.sim.cluster import ClusterSimulation, RoutingSpec
from voltana.sim.runner import (
    SimulationSetup,
    allowed_clocks_mhz,
    parse_policy,
    run_policy,
    static_spec,
    with_clock_policy,
)
from voltana.sim.synthetic import synthetic_workload
from voltana.sim.workload import from_columns

from .conftest import make_setup


class IterationLog:
    """A plugin that records every finished iteration, as telemetry would."""

    def __init__(self) -> None:
        self.records: list[IterationRecord] = []

    @hookimpl
    def voltana_iteration_finished(self, record: IterationRecord) -> None:
        self.records.append(record)


@pytest.fixture
def iteration_log() -> Iterator[IterationLog]:
    log = IterationLog()
    pm = get_plugin_manager()
    pm.register(log, name="test-iteration-log")
    yield log
    pm.unregister(name="test-iteration-log")


def simulate(setup: SimulationSetup, workload, policy: str = "static-max"):  # type: ignore[no-untyped-def]
    from voltana.plugins.ecofreq.factory import build_controller

    spec = parse_policy(policy)
    configs = {p: with_clock_policy(setup.config, *spec.clock_policy(p)) for p in Phase}
    sim = ClusterSimulation(
        workload,
        setup.cluster,
        lambda phase, iid: build_controller(configs[phase], phase, iid, setup.cluster.model, setup.hook),
        setup.hook,
        setup.slo,
        RoutingSpec(spec.prefill_route, spec.decode_route),
    )
    return sim.run()


def test_one_request_timeline_and_energy_match_the_performance_model(a100_llama: PerformanceModel) -> None:
    setup = make_setup(a100_llama, 1, 1)
    workload = from_columns("one", [0.0], [1000], [4])
    outcome = simulate(setup, workload, "static-max")
    (request,) = outcome.requests
    top = a100_llama.max_clock_mhz
    prefill = a100_llama.cost(Phase.PREFILL, 1, 1000, 0, top)
    decode = [a100_llama.cost(Phase.DECODE, 1, 1, 1000 + k, top) for k in range(3)]
    transfer_s = setup.cluster.kv_transfer_s(1000)
    assert request.first_token_s == pytest.approx(prefill.latency_s)
    assert request.finish_s == pytest.approx(
        prefill.latency_s + transfer_s + sum(c.latency_s for c in decode)
    )
    assert request.generated == 4
    busy_j = prefill.energy_j + sum(c.energy_j for c in decode)
    busy_s = prefill.latency_s + sum(c.latency_s for c in decode)
    from voltana.sim.metrics import summarize

    result = summarize("static-max", 1.0, outcome, setup.slo)
    idle_j = a100_llama.idle_power_w() * (2 * outcome.span_s - busy_s)
    assert result.energy_j == pytest.approx(busy_j + idle_j)
    assert result.clock_residency == {"prefill": {top: 1.0}, "decode": {top: 1.0}}


def test_every_request_finishes_with_ordered_times(setup: SimulationSetup) -> None:
    workload = synthetic_workload(6.0, 20.0, seed=4)
    outcome = simulate(setup, workload, "ecofreq+ecoroute")
    for request in outcome.requests:
        assert request.arrival_s < request.first_token_s <= request.finish_s
        assert request.generated == request.output_tokens
        assert request.prefilled == request.input_tokens


def test_controllers_see_every_iteration_through_the_hooks(
    setup: SimulationSetup, iteration_log: IterationLog
) -> None:
    workload = synthetic_workload(6.0, 15.0, seed=5)
    result = run_policy(setup, parse_policy("ecofreq+ecoroute"), workload)
    records = iteration_log.records
    assert len(records) == result.iterations
    assert {r.decision.policy for r in records} == {"ecofreq"}
    allowed = set(allowed_clocks_mhz(setup.config, setup.cluster.model))
    assert all(r.applied_clock_mhz in allowed for r in records)
    decode = [r for r in records if r.snapshot.phase is Phase.DECODE]
    for r in decode:
        snap = r.snapshot
        assert snap.num_new_tokens == snap.batch_size
        assert snap.num_context_tokens == sum(q.context_tokens for q in snap.requests)


def test_prefill_budget_chunks_long_prompts(setup: SimulationSetup, iteration_log: IterationLog) -> None:
    workload = from_columns("long", [0.0, 0.0], [20000, 300], [2, 2])
    simulate(setup, workload)
    prefill = [r.snapshot for r in iteration_log.records if r.snapshot.phase is Phase.PREFILL]
    assert all(s.num_new_tokens <= setup.cluster.prefill_token_budget for s in prefill)
    long_chunks = [q for s in prefill for q in s.requests if q.request_id == "r0"]
    assert [q.new_tokens for q in long_chunks] == [8192, 8192, 3616]
    assert [q.context_tokens for q in long_chunks] == [0, 8192, 16384]


def test_decode_batch_limit_queues_admission(
    a100_llama: PerformanceModel, iteration_log: IterationLog
) -> None:
    setup = make_setup(a100_llama, 1, 1, max_decode_batch=3)
    workload = from_columns("burst", [0.0] * 8, [100] * 8, [20] * 8)
    outcome = simulate(setup, workload)
    decode = [r.snapshot for r in iteration_log.records if r.snapshot.phase is Phase.DECODE]
    assert max(s.batch_size for s in decode) == 3
    assert any(s.waiting for s in decode)  # admission queue shows up as waiting requests
    assert all(r.finish_s > 0 for r in outcome.requests)


def test_kv_capacity_limits_admission(a100_llama: PerformanceModel, iteration_log: IterationLog) -> None:
    setup = make_setup(a100_llama, 1, 1, kv_capacity_tokens=1000)
    workload = from_columns("kv", [0.0, 0.0, 0.0], [500, 500, 500], [50, 50, 50])  # 550 tokens each
    outcome = simulate(setup, workload)
    decode = [r.snapshot for r in iteration_log.records if r.snapshot.phase is Phase.DECODE]
    assert max(s.batch_size for s in decode) == 1
    finishes = sorted(r.finish_s for r in outcome.requests)
    assert finishes[0] < finishes[1] < finishes[2]


def test_same_seed_gives_identical_results(setup: SimulationSetup) -> None:
    workload = synthetic_workload(8.0, 15.0, seed=11)
    for policy in ("voltana-paper", "ecofreq+ecoroute"):  # random prefill routing and adaptive controllers
        first = run_policy(setup, parse_policy(policy), workload).to_json()
        second = run_policy(setup, parse_policy(policy), workload).to_json()
        assert first == second


def test_static_clocks_pin_residency_and_order_energy(setup: SimulationSetup) -> None:
    workload = synthetic_workload(5.0, 20.0, seed=2)
    high = run_policy(setup, parse_policy("static-max"), workload)
    low = run_policy(setup, parse_policy("static-min"), workload)
    clocks = allowed_clocks_mhz(setup.config, setup.cluster.model)
    mid = clocks[len(clocks) // 2]
    middle = run_policy(setup, static_spec(mid, mid, "static-mid"), workload)
    assert high.clock_residency["decode"] == {1410: 1.0} and low.clock_residency["prefill"] == {1005: 1.0}
    assert middle.clock_residency == {"prefill": {mid: 1.0}, "decode": {mid: 1.0}}
    assert low.energy_j < middle.energy_j < high.energy_j
    assert high.ttft.p50_s < low.ttft.p50_s
