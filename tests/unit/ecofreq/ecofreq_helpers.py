"""Shared helpers for the EcoFreq tests: the simulated A100 as ground truth, controllers, a prefill loop."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from voltana.core.config import ClockConfig
from voltana.core.controller import FrequencyController
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.predictor import EnergyPredictor, LatencyPredictor, prefill_attention_work
from voltana.core.profile import Profile
from voltana.core.rls import AdaptationSettings
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    IterationRecord,
    Phase,
    QueuedRequest,
    ScheduledRequest,
    Slo,
)
from voltana.hardware.simulated import PerformanceModel, performance_model
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.ecofreq.factory import profile_from_model, resolve_allowed_clocks, seeded_predictors

SLO = Slo(ttft_s=0.8, itl_s=0.05)
"""The paper's demo SLOs."""


@cache
def a100() -> PerformanceModel:
    """Ground truth of every test: Llama-3.1-8B on the simulated A100-80GB."""
    return performance_model("a100-80gb", "llama-3.1-8b")


@cache
def default_clocks(model_name: str = "llama-3.1-8b") -> tuple[int, ...]:
    """The 8 default clock levels of the A100 (210..1410 MHz)."""
    return resolve_allowed_clocks(ClockConfig(), a100().supported_clocks_mhz)


@cache
def a100_profile(model_name: str = "llama-3.1-8b") -> Profile:
    """A profile of ``model_name`` on the simulated A100 at the default clocks."""
    return profile_from_model(performance_model("a100-80gb", model_name), default_clocks())


def predictors(
    phase: Phase,
    clocks: Sequence[int] | None = None,
    model_name: str = "llama-3.1-8b",
    settings: AdaptationSettings | None = None,
) -> tuple[LatencyPredictor, EnergyPredictor]:
    """Fresh latency and energy predictors of ``phase`` seeded from a simulated-A100 profile."""
    return seeded_predictors(a100_profile(model_name), phase, clocks or default_clocks(), settings)


@cache
def plugin_hook() -> Any:
    """The hook relay of a plugin manager with the built-in plugins only."""
    return make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook


def controller(
    phase: Phase,
    policy: str = "ecofreq",
    *,
    clocks: Sequence[int] | None = None,
    options: Mapping[str, Any] | None = None,
    safety_margin: float = 0.1,
    slo: Slo = SLO,
    hook: Any = None,
) -> FrequencyController:
    """A controller on the simulated A100 with freshly seeded predictors."""
    grid = tuple(clocks or default_clocks())
    latency, energy = predictors(phase, grid)
    return FrequencyController(
        instance_id=f"{phase.value}-0",
        phase=phase,
        allowed_clocks_mhz=grid,
        slo=slo,
        policy=policy,
        hook=hook or plugin_hook(),
        predictor=latency,
        power_model=energy,
        options=options,
        safety_margin=safety_margin,
    )


def random_batch(rng: random.Random, phase: Phase) -> tuple[int, int, int, float, float]:
    """(batch size, new tokens, context tokens, x0, x1) of a random realistic iteration."""
    if phase is Phase.PREFILL:
        batch = rng.randint(1, 8)
        new = rng.randint(batch * 16, 8192)
        context = rng.choice((0, 0, rng.randint(0, 8192)))
        return batch, new, context, float(new), prefill_attention_work(new, context, batch)
    batch = rng.randint(1, 256)
    kv = min(batch * rng.randint(16, 2048), 300_000)
    return batch, batch, kv, float(batch), float(kv)


def decode_snapshot(batch: int, kv_per_request: int, now_s: float = 10.0) -> BatchSnapshot:
    """A decode iteration of ``batch`` requests with ``kv_per_request`` cached tokens each."""
    requests = [ScheduledRequest(f"d{i}", 1, kv_per_request, 0.0) for i in range(batch)]
    return BatchSnapshot.build(Phase.DECODE, requests, now_s=now_s)


@dataclass
class PrefillRun:
    """Outcome of :func:`run_prefill`: per-request TTFT (s), clocks used, energy (J, idle gaps included)."""

    ttft_s: dict[str, float] = field(default_factory=dict)
    clocks_mhz: list[int] = field(default_factory=list)
    energy_j: float = 0.0


def next_prefill_iteration(
    queue: Sequence[tuple[str, int, float]], budget: int, now_s: float, iteration: int = 0
) -> BatchSnapshot:
    """The engine's next prefill iteration over ``queue`` (id, tokens, arrival s).

    Whole prompts in order up to ``budget`` tokens (one prompt always fits); the rest waits.
    """
    count, used = 0, 0
    while count < len(queue) and (count == 0 or used + queue[count][1] <= budget):
        used += queue[count][1]
        count += 1
    return BatchSnapshot.build(
        Phase.PREFILL,
        [ScheduledRequest(rid, tokens, 0, arrival) for rid, tokens, arrival in queue[:count]],
        now_s=now_s,
        waiting=[QueuedRequest(rid, tokens, arrival) for rid, tokens, arrival in queue[count:]],
        iteration=iteration,
    )


def run_prefill(
    prompts: Sequence[tuple[str, int, float]],
    policy: FrequencyController | int,
    start_s: float,
    budget: int,
    model: PerformanceModel | None = None,
) -> PrefillRun:
    """Serve ``prompts`` (id, tokens, arrival s) on one simulated prefill instance, first come first served.

    Each iteration packs the arrived prompts in order up to ``budget`` tokens (one prompt always fits), takes
    the clock from ``policy`` (a controller, which also observes the measured iteration, or a fixed clock) and
    advances time by the simulated GPU's latency at that clock; with nothing arrived, time jumps to the next
    arrival (after one idle decision) and the idle GPU draws its idle power. A prompt's first token comes at
    the end of its iteration.
    """
    gpu = model or a100()
    pending = sorted(prompts, key=lambda p: p[2])
    now = start_s
    run = PrefillRun()
    iteration = 0
    while pending:
        arrived = [p for p in pending if p[2] <= now]
        if not arrived:
            if isinstance(policy, FrequencyController):
                policy.decide(BatchSnapshot.build(Phase.PREFILL, (), now_s=now))
            run.energy_j += gpu.idle_power_w() * (pending[0][2] - now)
            now = pending[0][2]
            continue
        snapshot = next_prefill_iteration(arrived, budget, now, iteration)
        batch = arrived[: len(snapshot.requests)]
        for p in batch:
            pending.remove(p)
        used = snapshot.num_new_tokens
        if isinstance(policy, FrequencyController):
            decision = policy.decide(snapshot)
        else:
            decision = ClockDecision(policy, DecisionReason.STATIC, "static")
        cost = gpu.cost(Phase.PREFILL, len(batch), used, 0, decision.clock_mhz)
        if isinstance(policy, FrequencyController):
            policy.observe(
                IterationRecord(snapshot, decision, decision.clock_mhz, now, cost.latency_s, cost.energy_j)
            )
        now += cost.latency_s
        run.energy_j += cost.energy_j
        run.clocks_mhz.append(decision.clock_mhz)
        for rid, _, arrival in batch:
            run.ttft_s[rid] = now - arrival
        iteration += 1
    return run
