"""Energy-aware prefill routing in the simulator: short prompts share prefill iterations, TTFT kept."""

from __future__ import annotations

import dataclasses

import numpy as np

from voltana.core.hookspecs import hookimpl
from voltana.core.types import IterationRecord, Phase
from voltana.hardware.simulated import PerformanceModel
from voltana.plugins import get_plugin_manager
from voltana.sim.runner import parse_policy, run_policy
from voltana.sim.workload import from_columns

from .conftest import make_setup


class PrefillBatches:
    """Records how many prompts each prefill iteration ran (a telemetry plugin)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @hookimpl
    def voltana_iteration_finished(self, record: IterationRecord) -> None:
        if record.snapshot.phase is Phase.PREFILL:
            self.sizes.append(len(record.snapshot.requests))


def test_energy_ttft_batches_short_prompts_and_keeps_the_ttft(a100_llama: PerformanceModel) -> None:
    # ShareGPT-like prompts (120 tokens) at 50 req/s for 10 s: each prefill iteration is memory-bound.
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(1 / 50.0, 500)).tolist()
    workload = from_columns("short", arrivals, [120] * 500, [40] * 500)
    setup = make_setup(a100_llama)
    ours = parse_policy("ecofreq+ecoroute")
    results = {}
    batches = {}
    pm = get_plugin_manager()
    for route in ("predicted-ttft", "energy-ttft"):
        log = PrefillBatches()
        pm.register(log, name="test-prefill-batches")
        try:
            results[route] = run_policy(setup, dataclasses.replace(ours, prefill_route=route), workload)
        finally:
            pm.unregister(name="test-prefill-batches")
        batches[route] = float(np.mean(log.sizes))
    assert results["energy-ttft"].ttft_attainment == results["predicted-ttft"].ttft_attainment == 1.0
    # Measured (deterministic): predicted-ttft runs 1.00 prompts per prefill iteration (each prompt goes to
    # the instance that finishes it first, nearly always an idle one), energy-ttft 1.29.
    assert batches["predicted-ttft"] < 1.05
    assert batches["energy-ttft"] > 1.2 * batches["predicted-ttft"]
    assert results["energy-ttft"].prefill_energy_j < results["predicted-ttft"].prefill_energy_j
