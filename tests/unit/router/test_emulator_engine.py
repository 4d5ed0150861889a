"""The emulator's engine batches as the simulator does: chunked prefill (compose_prefill) and FIFO decode
admission under the running cap and the KV cache (admit_decode), with the same EngineLimits."""

from __future__ import annotations

import asyncio

from voltana.core.types import Phase
from voltana.emulator.engine import EmulatedEngine, EmuRequest, Faults
from voltana.hardware.simulated import performance_model
from voltana.sim.engine import EngineLimits, engine_limits

MODEL = performance_model("a100-80gb", "llama-3.1-8b")


class RecordingEngine(EmulatedEngine):
    """Records every iteration: phase and (request id, chunk, prefilled) or (request id, generated)."""

    def __init__(self, limits: EngineLimits, budget: int) -> None:
        super().__init__(
            MODEL, MODEL.max_clock_mhz, 0.0, Faults(), limits=limits, prefill_token_budget=budget
        )
        self.log: list[tuple[Phase, list[tuple[str, int, int]]]] = []

    def iteration_latency_s(self, phase: Phase, batch: list[EmuRequest]) -> float:
        if phase is Phase.PREFILL:
            self.log.append((phase, [(r.request_id, r.chunk, r.prefilled) for r in batch]))
        else:
            self.log.append((phase, [(r.request_id, r.generated, 0) for r in batch]))
        return super().iteration_latency_s(phase, batch)


async def _serve(engine: EmulatedEngine, requests: list[EmuRequest]) -> list[list[str]]:
    engine.start()
    for req in requests:
        engine.submit(req)

    async def drain(req: EmuRequest) -> list[str]:
        out = []
        while (token := await req.tokens.get()) is not None:
            out.append(token)
        return out

    try:
        return await asyncio.wait_for(asyncio.gather(*(drain(r) for r in requests)), 30.0)
    finally:
        await engine.stop()


def test_prefill_is_chunked_at_the_token_budget() -> None:
    engine = RecordingEngine(engine_limits("vllm", MODEL), budget=1000)
    requests = [
        EmuRequest(n, n, tokens, 2, needs_prefill=True) for n, tokens in (("a", 600), ("b", 700), ("c", 300))
    ]
    outputs = asyncio.run(_serve(engine, requests))
    assert [len(o) for o in outputs] == [2, 2, 2]
    prefills = [batch for phase, batch in engine.log if phase is Phase.PREFILL]
    # b is split: 400 tokens with a, its last 300 with c (computed over its first 400).
    assert prefills == [[("a", 600, 0), ("b", 400, 0)], [("b", 300, 400), ("c", 300, 0)]]
    assert all(r.prefilled == r.prompt_tokens for r in requests)
    # Prefill iterations go first while prompts wait; then every request decodes together.
    decodes = [batch for phase, batch in engine.log if phase is Phase.DECODE]
    assert [rid for rid, _, _ in decodes[0]] == ["a", "b", "c"]


def test_decode_admission_respects_running_cap_and_kv_capacity() -> None:
    # Running cap 2: three requests with their KV already here never run three at a time.
    capped = RecordingEngine(EngineLimits("vllm", 2, 8192, 10**6), budget=8192)
    requests = [EmuRequest(f"r{i}", f"r{i}", 100, 3, needs_prefill=False) for i in range(3)]
    asyncio.run(_serve(capped, requests))
    sizes = [len(batch) for phase, batch in capped.log if phase is Phase.DECODE]
    assert max(sizes) == 2 and sum(sizes) == 9  # 3 tokens each, r2 admitted when a slot frees
    # KV capacity 250: each request holds prompt + output = 103 tokens, so two fit, a third waits.
    kv_bound = RecordingEngine(EngineLimits("vllm", 64, 8192, 250), budget=8192)
    requests = [EmuRequest(f"k{i}", f"k{i}", 100, 3, needs_prefill=False) for i in range(3)]
    asyncio.run(_serve(kv_bound, requests))
    decodes = [[rid for rid, _, _ in batch] for phase, batch in kv_bound.log if phase is Phase.DECODE]
    assert decodes[0] == ["k0", "k1"]
    assert max(len(b) for b in decodes) == 2 and "k2" in decodes[-1]


def test_a_request_over_the_whole_kv_cache_runs_alone_instead_of_hanging() -> None:
    engine = RecordingEngine(EngineLimits("vllm", 8, 8192, 50), budget=8192)
    outputs = asyncio.run(_serve(engine, [EmuRequest("big", "big", 100, 2, needs_prefill=False)]))
    assert len(outputs[0]) == 2
