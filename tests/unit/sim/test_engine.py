"""The decode engine model: running-request caps from vLLM's and SGLang's defaults, admission wait reported
apart from ITL, requests an engine refuses (over its context length or over a decode instance's KV cache)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from voltana.core.types import InstanceState, Phase
from voltana.hardware.simulated import PerformanceModel, performance_model
from voltana.sim.cluster import ClusterSimulation, RoutingSpec
from voltana.sim.engine import (
    SGLANG_POOL_MIN_REQUESTS,
    VLLM_MAX_NUM_SEQS,
    VLLM_MAX_NUM_SEQS_LARGE_GPU,
    EngineConfigError,
    admit_decode,
    compose_prefill,
    engine_limits,
)
from voltana.sim.metrics import admission_waits, request_latencies
from voltana.sim.runner import SimulationError, parse_policy, run_policy
from voltana.sim.workload import from_columns

from .conftest import make_setup
from .test_cluster import IterationLog, iteration_log, simulate  # noqa: F401  (fixture)


def test_vllm_cap_follows_its_gpu_rule() -> None:
    a100 = performance_model("a100-80gb", "llama-3.1-8b")
    h100 = performance_model("h100-80gb", "llama-3.1-8b")
    assert engine_limits("vllm", a100).max_running == VLLM_MAX_NUM_SEQS == 256  # A100 excluded on purpose
    assert engine_limits("vllm", h100).max_running == VLLM_MAX_NUM_SEQS_LARGE_GPU == 1024


def test_sglang_cap_is_bound_by_kv_capacity() -> None:
    a100 = performance_model("a100-80gb", "llama-3.1-8b")
    limits = engine_limits("sglang", a100)
    # Pool: kv / 131072 * 512 is below 2048, so the floor 2048 applies; kv // 2 is far above it.
    assert a100.kv_capacity_tokens / 131072 * 512 < SGLANG_POOL_MIN_REQUESTS
    assert limits.max_running == SGLANG_POOL_MIN_REQUESTS
    tiny = engine_limits("sglang", a100, kv_capacity_tokens=3000, max_model_len=2048)
    assert tiny.max_running == 1500  # max_total_num_tokens // 2 binds


def test_configured_limits_win_and_bad_ones_are_one_line() -> None:
    model = performance_model("a100-80gb", "llama-3.1-8b")
    limits = engine_limits("sglang", model, max_running=64, max_model_len=16384)
    assert (limits.max_running, limits.max_model_len) == (64, 16384)
    assert limits.kv_capacity_tokens == model.kv_capacity_tokens
    assert engine_limits("vllm", model).max_model_len == 131072  # the model's context length
    for kwargs, words in (
        ({"engine": "tgi"}, "unknown engine 'tgi'"),
        ({"max_running": 0}, "at least 1"),
        ({"max_model_len": 1}, "at least 2 tokens"),
    ):
        engine = str(kwargs.pop("engine", "vllm"))
        with pytest.raises(EngineConfigError, match=words) as info:
            engine_limits(engine, model, **kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)


def test_model_profiles_carry_context_and_new_models_run() -> None:
    assert performance_model("a100-80gb", "qwen3-32b").model.context_tokens == 40960
    ministral = performance_model("a100-80gb", "ministral-3b")
    assert ministral.tp == 1 and ministral.model.n_layers == 14
    qwen = performance_model("a100-80gb", "qwen3-32b")
    assert qwen.tp == 2 and qwen.kv_capacity_tokens > 100_000
    # A 3B model leaves more KV room per GPU than an 8B one; a decode step is cheaper.
    llama = performance_model("a100-80gb", "llama-3.1-8b")
    assert ministral.kv_capacity_tokens > llama.kv_capacity_tokens
    step = {m.name: m.cost(Phase.DECODE, 64, 64, 64 * 500, 1410).latency_s for m in (ministral, llama, qwen)}
    assert step[ministral.name] < step[llama.name]


def test_admission_wait_is_reported_apart_from_itl(a100_llama: PerformanceModel) -> None:
    setup = make_setup(a100_llama, 1, 1, max_decode_batch=1)
    workload = from_columns("burst", [0.0] * 4, [100] * 4, [30] * 4)
    outcome = simulate(setup, workload)
    _, itl = request_latencies(outcome)
    wait, decode_itl = admission_waits(outcome)
    step_s = a100_llama.cost(Phase.DECODE, 1, 1, 130, 1410).latency_s
    # One slot: each request waits for those before it (about 29 decode steps each) to finish.
    assert wait[0] < 2 * step_s and wait[1] > 20 * step_s and wait[3] > wait[2] > wait[1]
    # The mean ITL a user sees carries the wait; without it, one decode step (+ KV transfer) per token.
    assert itl == pytest.approx(decode_itl + wait / 29)
    assert decode_itl.max() < 1.5 * step_s
    result = run_policy(setup, parse_policy("static-max"), workload)
    assert result.admission_wait.p99_s == pytest.approx(float(np.percentile(wait, 99)))
    assert result.admission_wait_mean_s == pytest.approx(float(wait.mean()))
    assert result.decode_itl.p99_s < 1.5 * step_s < result.itl.p99_s
    data = result.to_json()
    assert data["admission_wait"]["p99_s"] == result.admission_wait.p99_s
    roomy = run_policy(make_setup(a100_llama, 1, 1), parse_policy("static-max"), workload)
    # All four fit the default cap of 256: they wait at most for the running iteration to end.
    assert roomy.admission_wait.p99_s < 2 * step_s


def test_over_context_requests_are_refused_before_prefill(
    a100_llama: PerformanceModel,
    iteration_log: IterationLog,  # noqa: F811
) -> None:
    setup = make_setup(a100_llama, 1, 1)
    # r0: a 2M-token prompt (issue 18 item 7); r1: fits alone but not with its output; r2: fine.
    workload = from_columns("long", [0.0, 0.1, 0.2], [2_000_000, 131_000, 500], [10, 100, 10])
    outcome = simulate(setup, workload)
    assert [r.request_id for r in outcome.rejected_over_context] == ["r0", "r1"]
    assert [r.request_id for r in outcome.requests] == ["r2"]
    ran = {q.request_id for rec in iteration_log.records for q in rec.snapshot.requests}
    assert ran == {"r2"}  # no prefill compute for a refused request
    assert outcome.span_s < 5.0  # (the 2M-token prompt used to "run" for 5,997 s)
    result = run_policy(setup, parse_policy("static-max"), workload)
    assert (result.rejected_over_context, result.rejected_over_kv, result.num_requests) == (2, 0, 1)


def test_over_kv_requests_are_never_admitted(a100_llama: PerformanceModel) -> None:
    setup = make_setup(a100_llama, 1, 2, kv_capacity_tokens=1000)
    workload = from_columns("kv", [0.0, 0.0], [900, 400], [200, 100])  # r0 needs 1100 > 1000
    outcome = simulate(setup, workload)
    assert [r.request_id for r in outcome.rejected_over_kv] == ["r0"]
    assert all(r.decode_admit_s >= 0 for r in outcome.requests)
    result = run_policy(setup, parse_policy("static-max"), workload)
    assert (result.rejected_over_kv, result.num_requests) == (1, 1)


def test_all_refused_is_one_line_error(a100_llama: PerformanceModel) -> None:
    setup = make_setup(a100_llama, 1, 1, max_model_len=1000)
    workload = from_columns("long", [0.0, 1.0], [2000, 900], [10, 200])
    with pytest.raises(SimulationError, match="refuses all 2 requests: 2 longer than max_model_len 1000"):
        run_policy(setup, parse_policy("static-max"), workload)


def test_decode_state_shows_admission_fields(a100_llama: PerformanceModel) -> None:
    setup = make_setup(a100_llama, 1, 1, max_decode_batch=2, kv_capacity_tokens=10_000)
    seen: list[InstanceState] = []
    sim = ClusterSimulation(
        from_columns("s", [0.0] * 4, [1000] * 4, [400] * 4),
        setup.cluster,
        lambda phase, iid: _static(setup, phase, iid),
        setup.hook,
        setup.slo,
        RoutingSpec("round-robin", "round-robin"),
    )
    original = sim._start_decode

    def spy(inst):  # type: ignore[no-untyped-def]
        original(inst)
        seen.append(sim._state(inst))

    sim._start_decode = spy  # type: ignore[method-assign]
    sim.run()
    assert all(s.max_running == 2 for s in seen)
    busy = [s for s in seen if s.num_admission_waiting]
    assert busy, "two requests must have waited for a batch slot"
    for s in busy:
        assert s.num_running == 2 and not s.can_admit(10)
        assert s.kv_committed_tokens == 1400 * (s.num_running + s.num_waiting)
    assert seen[-1].num_admission_waiting == 0


def _static(setup, phase, iid):  # type: ignore[no-untyped-def]
    from voltana.plugins.ecofreq.factory import build_controller
    from voltana.sim.runner import with_clock_policy

    config = with_clock_policy(setup.config, "static-max", {})
    return build_controller(config, phase, iid, setup.cluster.model, setup.hook)


def test_can_admit_reads_unknown_limits_as_unlimited() -> None:
    unknown = InstanceState("d0", Phase.DECODE, num_running=5000)
    assert unknown.can_admit(10**9)
    full = InstanceState("d0", Phase.DECODE, num_running=3, num_waiting=1, max_running=4)
    assert not full.can_admit(1)
    kv = InstanceState("d0", Phase.DECODE, max_running=8, kv_capacity_tokens=1000, kv_committed_tokens=900)
    assert kv.can_admit(100) and not kv.can_admit(101)


def test_compose_prefill_takes_whole_prompts_then_splits_the_last() -> None:
    assert compose_prefill([3000, 4000, 5000], 8192) == [3000, 4000, 1192]  # the third is chunked
    assert compose_prefill([3000, 5192, 5000], 8192) == [3000, 5192]  # exact fit: no empty chunk
    assert compose_prefill([20000, 10], 8192) == [8192]  # a long prompt fills the iteration alone
    assert compose_prefill([], 8192) == []
    assert compose_prefill([5], 0) == []


def test_compose_prefill_reads_the_queue_only_as_far_as_it_goes() -> None:
    seen: list[int] = []

    def queue() -> Iterator[int]:
        for n in (100, 9000, 7, 7):
            seen.append(n)
            yield n

    assert compose_prefill(queue(), 1000) == [100, 900]
    assert seen == [100, 9000]


def test_admit_decode_stops_at_the_running_cap_and_at_kv_capacity() -> None:
    # FIFO under the KV cache: 400 + 500 fit 1000 with 50 reserved; 200 more would not.
    assert admit_decode([400, 500, 200, 10], running=1, kv_reserved=50, kv_capacity=1000, max_running=8) == 2
    # The running cap: 3 run, 4 allowed, so one joins however much KV is free.
    assert admit_decode([10, 10, 10], running=3, kv_reserved=0, kv_capacity=10**6, max_running=4) == 1
    assert admit_decode([10], running=4, kv_reserved=0, kv_capacity=10**6, max_running=4) == 0
    # No overtaking: a small request behind one that does not fit waits.
    assert admit_decode([900, 10], running=0, kv_reserved=200, kv_capacity=1000, max_running=8) == 0
    assert admit_decode([], running=0, kv_reserved=0, kv_capacity=1000, max_running=8) == 0
