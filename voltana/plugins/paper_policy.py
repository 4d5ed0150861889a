"""``voltana-paper``: the clock rule of the VoltanaLLM paper's released code, for comparison with EcoFreq.

Prefill: the max clock whenever the waiting queue is non-empty; otherwise the lowest clock whose predicted
batch latency fits ``TTFT - (time the oldest request in the batch has waited)``. Decode: the lowest clock with
predicted ITL <= ITL SLO. No clock fits: the max clock. Idle: the lowest clock. The SLO is shrunk by the same
``policy.safety_margin`` EcoFreq uses (0 gives the released code's exact rule), so comparisons are fair.
"""

from __future__ import annotations

from collections.abc import Callable

from voltana.core.contexts import LATENCY_MODEL, ClockContext, PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.predictor import ClockTable, features
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason, Phase

POLICY_NAME = "voltana-paper"


def paper_clock(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
    """The paper's decision for ``snapshot`` (see module docstring)."""
    clocks = ctx.allowed_clocks_mhz
    if snapshot.is_idle:
        return ClockDecision(clocks[0], DecisionReason.IDLE, POLICY_NAME)
    predictor: ClockTable | None = ctx.predictor
    if predictor is None:
        return ClockDecision(clocks[-1], DecisionReason.PREDICTOR_UNTRUSTED, POLICY_NAME)
    if ctx.phase is Phase.PREFILL and snapshot.waiting:
        return ClockDecision(clocks[-1], DecisionReason.QUEUE_BOUND, POLICY_NAME)
    margin = float(ctx.options.get("safety_margin", 0.0))
    bound = ctx.slo.for_phase(ctx.phase) * (1.0 - margin)
    if ctx.phase is Phase.PREFILL:
        bound -= snapshot.now_s - min(r.arrival_time_s for r in snapshot.requests)
    x0, x1 = features(snapshot)
    latency = predictor.values(x0, x1)
    for k, predicted_s in enumerate(latency):
        if predicted_s <= bound:
            reason = DecisionReason.ENERGY_OPTIMAL if k == 0 else DecisionReason.SLO_BOUND
            return ClockDecision(clocks[k], reason, POLICY_NAME, predicted_s)
    return ClockDecision(clocks[-1], DecisionReason.INFEASIBLE, POLICY_NAME, latency[-1])


@hookimpl
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    register(
        PolicyInfo(
            "clock",
            POLICY_NAME,
            "VoltanaLLM paper: max clock if anything waits, else the lowest clock meeting TTFT/ITL",
            paper_clock,
            reads_models=LATENCY_MODEL,
        )
    )
