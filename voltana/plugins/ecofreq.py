"""EcoFreq, voltana's default clock policy (``policy.clock = "ecofreq"``).

Prefill: the current batch finishes after its predicted latency; every waiting request is then served
first-come first-served in iterations of at most ``prefill_token_budget`` tokens, each predicted with the same
per-clock line, and (``plan_for_newcomer``) so is one prompt of the recent mean size arriving now, because
requests keep arriving while a slow iteration runs. A clock is feasible when every running and queued request
would get its first token within ``TTFT * (1 - safety_margin)`` of its arrival; among feasible clocks the one
with the least predicted energy wins. The paper's rule instead jumps to the max clock whenever anything waits.

Decode: feasible clocks have predicted ITL <= ``ITL * (1 - safety_margin)``; the least predicted energy wins
(energy vs clock is U-shaped, so that is not always the lowest feasible clock).

Guardrails (``policy.options``): the max clock when the predictor's recent MAPE exceeds ``mape_limit`` or the
batch lies outside what it has seen; a switch costs ``clock_change_latency_s`` of predicted latency; after a
change the clock dwells ``min_dwell_s`` and moves for energy only when it saves more than ``hysteresis``
(moving up to meet an SLO is never delayed); an idle instance gets the lowest clock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from itertools import accumulate
from operator import attrgetter, mul
from typing import Any

from voltana.core.contexts import ClockContext, PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.predictor import ClockTable, features
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason, Phase

POLICY_NAME = "ecofreq"
_STATE_KEY = "ecofreq"
_prompt_tokens = attrgetter("prompt_tokens")
_arrival_time_s = attrgetter("arrival_time_s")


@dataclass(frozen=True, slots=True)
class EcoFreqOptions:
    """Guardrail knobs from ``policy.options`` (unknown keys belong to other policies and are ignored)."""

    safety_margin: float = 0.1
    """Share of the SLO kept in reserve (``policy.safety_margin``)."""
    mape_limit: float = 0.15
    """Recent predictor MAPE (fraction) above which the max clock is used."""
    min_observations: int = 16
    """Observations before the MAPE guardrail applies (a seeded predictor is trusted until then)."""
    min_dwell_s: float = 0.05
    """After a change, energy-motivated moves wait this long (s)."""
    hysteresis: float = 0.03
    """Relative predicted-energy saving needed to leave the current (feasible) clock."""
    clock_change_latency_s: float = 0.001
    """Predicted latency cost of changing the clock for one iteration (s)."""
    prefill_token_budget: int = 8192
    """Tokens per prefill iteration the engine schedules (vLLM/SGLang chunked-prefill budget)."""
    plan_for_newcomer: bool = True
    """Prefill: also plan for one prompt of the recent mean size arriving now, behind the queue."""

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> EcoFreqOptions:
        """Options from ``policy.options``; raises ValueError naming a key with a bad value."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in options:
                raw = options[f.name]
                try:
                    values[f.name] = _parse_option(f.name, raw)
                except (TypeError, ValueError):
                    kind = "true or false" if f.name in _BOOL_OPTIONS else "a number"
                    raise ValueError(f"policy.options.{f.name} must be {kind}, got {raw!r}") from None
        opts = cls(**values)
        if not 0.0 <= opts.safety_margin < 1.0 or opts.prefill_token_budget < 1 or opts.hysteresis < 0:
            raise ValueError(
                "policy.options: need 0 <= safety_margin < 1, hysteresis >= 0, token budget >= 1"
            )
        return opts


_BOOL_OPTIONS = frozenset({"plan_for_newcomer"})
_INT_OPTIONS = frozenset({"min_observations", "prefill_token_budget"})


def _parse_option(name: str, raw: Any) -> bool | int | float:
    if name in _BOOL_OPTIONS:
        if isinstance(raw, bool):
            return raw
        raise TypeError(name)
    return int(raw) if name in _INT_OPTIONS else float(raw)


class EcoFreqState:
    """Per-instance state: parsed options, SLO bounds, the clock currently held, the mean prompt size."""

    __slots__ = ("bound_s", "clock_index", "held_since_s", "opts", "prompt_tokens")

    def __init__(self, ctx: ClockContext) -> None:
        self.opts = EcoFreqOptions.from_mapping(ctx.options)
        self.bound_s = ctx.slo.for_phase(ctx.phase) * (1.0 - self.opts.safety_margin)
        self.clock_index: int | None = None
        self.held_since_s = -math.inf
        self.prompt_tokens = 0.0

    def note_prompts(self, snapshot: BatchSnapshot) -> None:
        """Track the mean tokens per prefill request (EWMA over iterations, weight 0.1)."""
        per_request = snapshot.num_new_tokens / len(snapshot.requests)
        if self.prompt_tokens == 0.0:
            self.prompt_tokens = per_request
        else:
            self.prompt_tokens += 0.1 * (per_request - self.prompt_tokens)


def state_of(ctx: ClockContext) -> EcoFreqState:
    """The policy's state for this instance (created on first use)."""
    state = ctx.state.get(_STATE_KEY)
    if state is None:
        state = ctx.state[_STATE_KEY] = EcoFreqState(ctx)
    return state


def predictor_trusted(predictor: ClockTable, opts: EcoFreqOptions, x0: float, x1: float) -> bool:
    """False when the predictor's recent error is too high or (x0, x1) lies beyond what it has seen."""
    if not predictor.covers(x0, x1):
        return False
    return predictor.num_observations < opts.min_observations or not predictor.recent_mape() > opts.mape_limit


def queue_groups(
    snapshot: BatchSnapshot, budget: int, bound_s: float, newcomer_tokens: int = 0
) -> list[tuple[int, int, float, float]]:
    """The waiting queue as the prefill iterations that complete some request's prompt.

    Requests are served in order, ``budget`` tokens per iteration (chunked prefill). Per such iteration
    ``m >= 1`` after the current one: ``(m, queued tokens computed by its end, attention work by its end,
    time left to the tightest first-token deadline among the requests it completes (s))``. The attention work
    counts each prompt as one causal request (``p**2 / 2``), matching the prefill feature. A positive
    ``newcomer_tokens`` adds a virtual prompt of that size arriving now, behind the queue.
    """
    waiting = snapshot.waiting
    tokens = list(map(_prompt_tokens, waiting))
    total = sum(tokens) + max(newcomer_tokens, 0)
    if total == 0:
        return []
    offset = bound_s - snapshot.now_s
    if total <= budget:  # the common case: the whole queue fits in the next iteration
        work = 0.5 * (sum(map(mul, tokens, tokens)) + max(newcomer_tokens, 0) ** 2)
        first = min(map(_arrival_time_s, waiting)) if waiting else snapshot.now_s
        if newcomer_tokens > 0 and snapshot.now_s < first:
            first = snapshot.now_s
        return [(1, total, work, first + offset)]
    arrivals = list(map(_arrival_time_s, waiting))
    if newcomer_tokens > 0:
        tokens.append(newcomer_tokens)
        arrivals.append(snapshot.now_s)
    cumulative = list(accumulate(tokens))
    groups: list[tuple[int, int, float, float]] = []
    lo, count, work = 0, len(cumulative), 0.0
    while lo < count:
        m = -(-cumulative[lo] // budget)
        hi = bisect_right(cumulative, m * budget, lo)
        chunk = tokens[lo:hi]
        work += 0.5 * sum(map(mul, chunk, chunk))
        end_tokens = m * budget if m * budget < total else total
        groups.append((m, end_tokens, work, min(arrivals[lo:hi]) + offset))
        lo = hi
    return groups


def _choose(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
    st = state_of(ctx)
    clocks = ctx.allowed_clocks_mhz
    top = len(clocks) - 1
    if snapshot.is_idle:
        # Idle is not a choice to dwell on: the first batch after it may move at once.
        st.clock_index, st.held_since_s = 0, -math.inf
        return ClockDecision(clocks[0], DecisionReason.IDLE, POLICY_NAME)
    predictor: ClockTable | None = ctx.predictor
    if predictor is None:
        return _hold(
            st,
            top,
            snapshot.now_s,
            ClockDecision(clocks[top], DecisionReason.PREDICTOR_UNTRUSTED, POLICY_NAME),
        )
    x0, x1 = features(snapshot)
    opts = st.opts
    if not predictor_trusted(predictor, opts, x0, x1):
        return _hold(
            st,
            top,
            snapshot.now_s,
            ClockDecision(clocks[top], DecisionReason.PREDICTOR_UNTRUSTED, POLICY_NAME),
        )
    has_batch = bool(snapshot.requests)
    latency = predictor.values(x0, x1) if has_batch else [0.0] * len(clocks)
    energy_model: ClockTable | None = ctx.power_model
    if energy_model is not None and has_batch:
        energy = energy_model.values(x0, x1)
    elif energy_model is not None:
        b = float(opts.prefill_token_budget)
        energy = energy_model.values(b, 0.5 * b * b)
    else:
        energy = [float(i) for i in range(len(clocks))]  # no energy model: rank lower clocks first
    report = energy if energy_model is not None else None
    held = st.clock_index
    change_s = opts.clock_change_latency_s

    if ctx.phase is Phase.PREFILL:
        check = _prefill_checker(snapshot, st, predictor, latency, has_batch)
    else:
        bound = st.bound_s

        def check(k: int) -> int:
            cost = latency[k] + (change_s if k != held else 0.0)
            return 0 if cost <= bound else 1

    order = sorted(range(len(clocks)), key=energy.__getitem__)
    queue_blocked = False
    chosen = -1
    for k in order:
        verdict = check(k)
        if verdict == 0:
            chosen = k
            break
        queue_blocked = queue_blocked or verdict == 2
    if chosen < 0:
        return _hold(
            st, top, snapshot.now_s, _decision(clocks, top, DecisionReason.INFEASIBLE, latency, report)
        )
    if held is not None and held != chosen and check(held) == 0:
        dwelling = snapshot.now_s - st.held_since_s < opts.min_dwell_s
        small_gain = energy[chosen] >= energy[held] * (1.0 - opts.hysteresis)
        if dwelling or small_gain:
            return _decision(clocks, held, DecisionReason.HYSTERESIS, latency, report)
    if chosen == order[0]:
        reason = DecisionReason.ENERGY_OPTIMAL
    else:
        reason = DecisionReason.QUEUE_BOUND if queue_blocked else DecisionReason.SLO_BOUND
    return _hold(st, chosen, snapshot.now_s, _decision(clocks, chosen, reason, latency, report))


def _prefill_checker(
    snapshot: BatchSnapshot,
    st: EcoFreqState,
    predictor: ClockTable,
    latency: list[float],
    has_batch: bool,
) -> Callable[[int], int]:
    """A feasibility test per clock index: 0 feasible, 1 the batch misses TTFT, 2 a queued request does."""
    opts = st.opts
    held = st.clock_index
    change_s = opts.clock_change_latency_s
    budget = opts.prefill_token_budget
    if has_batch:
        st.note_prompts(snapshot)
        oldest = min(map(_arrival_time_s, snapshot.requests))
        batch_slack = oldest + st.bound_s - snapshot.now_s
    else:
        batch_slack = math.inf
    newcomer = round(st.prompt_tokens) if opts.plan_for_newcomer else 0
    groups = queue_groups(snapshot, budget, st.bound_s, newcomer)
    rows = predictor.model.rows[predictor.segment_of(float(budget))]
    d = predictor.model.drift
    g0, g1, g2 = (d * g for g in predictor.model.gains)

    def check(k: int) -> int:
        done = latency[k] + (change_s if k != held else 0.0)
        if done > batch_slack:
            return 1
        if groups:
            r0, r1, r2 = rows[k]
            c0, c1, c2 = g0 * r0, g1 * r1, g2 * r2  # the row's effective line, as in effective_row()
            for m, tokens, work, deadline in groups:
                if done + c0 * tokens + c1 * work + c2 * m > deadline:
                    return 2
        return 0

    return check


def _decision(
    clocks: tuple[int, ...], k: int, reason: DecisionReason, latency: list[float], energy: list[float] | None
) -> ClockDecision:
    return ClockDecision(clocks[k], reason, POLICY_NAME, latency[k], None if energy is None else energy[k])


def _hold(st: EcoFreqState, k: int, now_s: float, decision: ClockDecision) -> ClockDecision:
    if st.clock_index != k:
        st.clock_index = k
        st.held_since_s = now_s
    return decision


@hookimpl
def voltana_choose_clock(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision | None:
    if ctx.policy != POLICY_NAME:
        return None
    return _choose(snapshot, ctx)


@hookimpl
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    register(
        PolicyInfo(
            "clock",
            POLICY_NAME,
            "least predicted energy meeting TTFT for the whole queue (prefill) or ITL (decode); guardrails",
        )
    )
