"""EcoFreq, voltana's default clock policy (``policy.clock = "ecofreq"``).

Prefill: the current batch finishes after its predicted latency; every waiting request is then served
first-come first-served in iterations of at most ``prefill_token_budget`` tokens, each predicted with the same
per-clock line. Arrivals are foreseen from an online estimate ``lambda`` of the prompt tokens per second
entering the instance (:class:`voltana.core.arrivals.ArrivalRate`): (``plan_for_newcomer``) a prompt of the
recent mean size arriving now is served behind the queue together with the ``lambda * t(f)`` tokens expected
while the current iteration runs, and a clock must sustain the load, ``lambda * (s per token at the full
budget) <= 1 - safety_margin`` (otherwise the queue grows without bound: overload means the max clock). A
clock is feasible when every running, queued and foreseen request would get its first token within
``TTFT * (1 - safety_margin)`` of its arrival. The paper's rule instead jumps to the max clock whenever
anything waits.

Decode: feasible clocks have predicted ITL <= ``ITL * (1 - safety_margin)`` for the next iteration, and, once
the instance has measured its load (:class:`voltana.core.decode_demand.DecodeDemand`: requests per second
``lambda`` entering it and tokens ``L`` generated per request), the clock must carry that load or time-share
with faster ones. Let ``B`` be the largest batch the instance may run (its running-request cap
``max_running_requests``, else the running batch while requests wait for admission, else the largest batch
the predictor has seen) with predicted ITL within the bound. The clock carries the load when
``B / ITL(B) >= lambda * L`` tokens per second (Little's law). A slower clock stays feasible while the backlog
it builds is within what the ITL bound absorbs: over one request's life the instance would hold
``max(b, lambda * L * ITL(b))`` requests plus those waiting (``b`` the running batch); that must fit ``B``,
or, where ``B`` is the cap, the last of the excess, waiting at that position for a slot, must still meet the
bound. Past that a faster clock drains the backlog (the effective clock is a mix matching the load). No
faster clock drains it once the max clock itself does not carry the load: a lasting overload ends
time-sharing (every clock that does not carry the load is refused, so the max clock runs). Lasting means for
one load window (``decode_window_s``, the time constant of the measured load) without a break: a shorter
excess of the estimate is within its own averaging (start-up, a burst, routing that packs one instance). A
break is the max clock carrying the load for a tenth of the window without a gap (``OVERLOAD_BREAK_SHARE``),
not one iteration where the estimates cross. A
non-empty admission queue is a signal: each waiting request's predicted mean ITL,
``ITL + (time waited + expected wait for a slot) / n`` with slots freed at ``B / (L * ITL)`` requests per
second, must stay within the bound, ``n`` a short output (``DecodeDemand.short_decode_tokens``, a low quantile
of measured lengths: a request's wait is spread over its own gaps); while ``L`` is unknown a queue means the
max clock. A running request whose mean ITL so far is above the bound (past an overload or a long wait) and
that the max clock can still bring back within it over its expected remaining tokens holds the clock's ITL
to the pace that does (:func:`_debt_pace_s`).

Objective (both phases): among feasible clocks the least predicted energy above idle,
``E(f) - idle_power_w * t(f)``: an instance draws its idle power whenever it is not computing, so a slower
iteration only costs what it draws beyond that (``idle_power_w`` 0: total energy, which is U-shaped in f).

Guardrails (``policy.options``): the max clock when the predictor's recent MAPE exceeds ``mape_limit`` or the
batch lies outside what it has seen; a switch costs ``clock_change_latency_s`` of predicted latency; after a
change the clock dwells ``min_dwell_s`` and moves for energy only when it saves more than ``hysteresis``
(moving up to meet an SLO is never delayed); an idle instance gets the lowest clock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from itertools import accumulate
from operator import mul
from typing import Any

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass

from voltana.core.arrivals import ArrivalRate
from voltana.core.config import ConfigBool, ConfigFloat, ConfigInt, read_options
from voltana.core.contexts import ClockContext, PolicyInfo
from voltana.core.decode_demand import DecodeDemand
from voltana.core.hookspecs import hookimpl
from voltana.core.predictor import ClockTable, features
from voltana.core.types import (
    DEFAULT_PREFILL_TOKEN_BUDGET,
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    Phase,
)

POLICY_NAME = "ecofreq"
_STATE_KEY = "ecofreq"
OVERLOAD_BREAK_SHARE = 0.1
"""Decode: the max clock must carry the measured load for this share of the load window (``decode_window_s``,
10 s by default: 1 s) without a gap before an overload counts as broken; a decision that does not check the
load (predictor untrusted, no output measured yet) is a gap. At the edge of capacity the load and capacity
estimates cross back and forth from one iteration to the next (the batch's mean context moves the capacity);
when any single iteration was a break, a lasting overload was never declared there and slower clocks kept
building a backlog the max clock could not drain (Llama-3.1-8B LMSYS 100 req/s: ITL attainment 2.9 points
below static max's on the mean of ten draws before, 0.7 after; ``docs/results.md``)."""


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="ignore", use_attribute_docstrings=True))
class EcoFreqOptions:
    """Guardrail knobs from ``policy.options`` (unknown keys belong to other policies and are ignored).

    A pydantic dataclass: each field's constraint is checked and its docstring is its description; build it
    from the config with :meth:`from_mapping`, which turns a bad value into one
    :class:`~voltana.core.config.ConfigError` line."""

    safety_margin: ConfigFloat = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of the SLO kept in reserve (``policy.safety_margin``)."""
    mape_limit: ConfigFloat = Field(default=0.15, ge=0.0)
    """Recent predictor MAPE (fraction) above which the max clock is used."""
    min_observations: ConfigInt = Field(default=16, ge=0)
    """Observations before the MAPE guardrail applies (a seeded predictor is trusted until then)."""
    min_dwell_s: ConfigFloat = Field(default=0.05, ge=0.0)
    """After a change, energy-motivated moves wait this long (s)."""
    hysteresis: ConfigFloat = Field(default=0.03, ge=0.0)
    """Relative predicted-energy saving needed to leave the current (feasible) clock."""
    clock_change_latency_s: ConfigFloat = Field(default=0.001, ge=0.0)
    """Predicted latency cost of changing the clock for one iteration (s)."""
    prefill_token_budget: ConfigInt = Field(default=DEFAULT_PREFILL_TOKEN_BUDGET, ge=1)
    """Tokens per prefill iteration the engine schedules (vLLM/SGLang chunked-prefill budget)."""
    plan_for_newcomer: ConfigBool = True
    """Prefill: also plan for one prompt of the recent mean size arriving now, behind the queue."""
    idle_power_w: ConfigFloat = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    """Power the instance draws when not computing (W, all its GPUs); the objective is energy above it."""
    arrival_window_s: ConfigFloat = Field(default=2.0, ge=0.0, allow_inf_nan=False)
    """Prefill: time constant of the arrival-rate estimate (s); 0 turns arrival awareness off."""
    decode_window_s: ConfigFloat = Field(default=10.0, ge=0.0, allow_inf_nan=False)
    """Decode: time constant of the measured load (requests/s; the output estimate averages over 5x it, s);
    0 turns the load and admission-queue constraints off (the next iteration's ITL only). Long, as the clock
    must carry the mean load: the admission queue answers bursts at once."""
    max_running_requests: ConfigInt = Field(default=0, ge=0)
    """Decode: the engine's running-request cap (vLLM ``max_num_seqs``, SGLang ``max_running_requests``);
    0: unknown, measured as the running batch while requests wait for admission."""

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> EcoFreqOptions:
        """Options from ``policy.options``; raises :class:`~voltana.core.config.ConfigError` (a ValueError)
        naming the first key with a bad value, what it must be and what it got, in one line."""
        return read_options(_OPTIONS_ADAPTER, options)


_OPTIONS_ADAPTER = TypeAdapter(EcoFreqOptions)


class EcoFreqState:
    """Per-instance state: parsed options, SLO bounds, the clock currently held, the mean prompt size, the
    prompt-token arrival rate (``token_rate_tps``: the estimate the last prefill decision used), the measured
    decode load (``demand``), since when the max clock has not carried it (``overloaded_since_s``, s; NaN
    while it does) and since when it has carried it without a gap (``carried_since_s``, s; NaN while it
    does not)."""

    __slots__ = (
        "arrivals",
        "bound_s",
        "carried_since_s",
        "clock_index",
        "debt_until_s",
        "demand",
        "held_since_s",
        "opts",
        "overloaded_since_s",
        "prompt_tokens",
        "token_rate_tps",
    )

    def __init__(self, ctx: ClockContext) -> None:
        self.opts = EcoFreqOptions.from_mapping(ctx.options)
        self.bound_s = ctx.slo.for_phase(ctx.phase) * (1.0 - self.opts.safety_margin)
        self.clock_index: int | None = None
        self.held_since_s = -math.inf
        self.prompt_tokens = 0.0
        window_s = self.opts.arrival_window_s
        self.arrivals = ArrivalRate(window_s) if window_s > 0 and ctx.phase is Phase.PREFILL else None
        decode_s = self.opts.decode_window_s
        self.demand = DecodeDemand(decode_s) if decode_s > 0 and ctx.phase is Phase.DECODE else None
        self.token_rate_tps = 0.0
        self.debt_until_s = -math.inf
        self.overloaded_since_s = math.nan  # decode: since when the max clock has not carried the load
        self.carried_since_s = math.nan  # decode: since when it has carried it, without a gap

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
    model = predictor.model  # (its counts and MAPE, without the predictor's delegating calls: every decision)
    return model.num_observations < opts.min_observations or not model.recent_mape() > opts.mape_limit


def queue_groups(
    snapshot: BatchSnapshot, budget: int, bound_s: float, newcomer_tokens: int = 0
) -> list[tuple[int, int, float, float]]:
    """The waiting queue as the prefill iterations that complete some request's prompt.

    Requests are served in order, ``budget`` tokens per iteration (chunked prefill). Per such iteration
    ``m >= 1`` after the current one: ``(m, queued tokens computed by its end, attention work by its end,
    time left to the tightest first-token deadline among the requests it completes (s))``. The attention work
    counts each prompt as one causal request (``p**2 / 2``), matching the prefill feature. A positive
    ``newcomer_tokens`` adds a virtual prompt of that size arriving now, behind the queue. All of
    :class:`QueueGroups`, which computes only the groups a caller reads.
    """
    return list(QueueGroups(snapshot, budget, bound_s, newcomer_tokens))


_EXACT_INT = 2**53
"""Integers below this are exact as float64: sums of halves of them are exact too."""


class QueueGroups:
    """:func:`queue_groups`'s groups, computed as far as they are read (and kept for the next reader).

    A prefill clock check reads the queue only when the running batch meets its own deadline, then walks the
    groups in order and stops at the first that misses its deadline; a group ``m`` iterations out misses it
    once ``m`` iterations take longer than the TTFT bound. So under overload (thousands of queued prompts)
    the checks read a few groups, or none. Nothing is computed before the first read; then the totals, what
    the last group holds (``total_tokens``, ``total_work``), by C-level sums (the work sum is exact below
    2**53, else every group is computed); each group on first read. Iterating yields exactly the ints and
    floats of the loop ``work += 0.5 * sum(p * p for p in group)`` over the groups in order.
    """

    __slots__ = (
        "_budget",
        "_cumulative",
        "_groups",
        "_lo",
        "_newcomer",
        "_now_s",
        "_offset",
        "_ready",
        "_tokens",
        "_total_tokens",
        "_total_work",
        "_waiting",
        "_work",
    )

    def __init__(
        self, snapshot: BatchSnapshot, budget: int, bound_s: float, newcomer_tokens: int = 0
    ) -> None:
        self._waiting = snapshot.waiting
        self._budget = budget
        self._now_s = snapshot.now_s
        self._offset = bound_s - snapshot.now_s
        self._newcomer = max(newcomer_tokens, 0)
        self._groups: list[tuple[int, int, float, float]] = []
        self._tokens: list[int] = []
        self._cumulative: list[int] = []
        self._lo = 0
        self._work = 0.0
        self._ready = False  # nothing read yet
        self._total_tokens = 0
        self._total_work = 0.0

    @property
    def total_tokens(self) -> int:
        """Queued prompt tokens (and the newcomer's): the last group's end."""
        if not self._ready:
            self._prepare()
        return self._total_tokens

    @property
    def total_work(self) -> float:
        """Attention work of the whole queue: the last group's (0.0 for an empty queue)."""
        if not self._ready:
            self._prepare()
        return self._total_work

    def _prepare(self) -> None:
        """The totals (and the only group when the whole queue fits in one iteration)."""
        self._ready = True
        waiting, newcomer, now_s = self._waiting, self._newcomer, self._now_s
        # List comprehensions, not map(attrgetter): attribute access of slotted records is faster inline.
        tokens = [q.prompt_tokens for q in waiting]
        if newcomer:
            tokens.append(newcomer)
        self._tokens = tokens
        total = self._total_tokens = sum(tokens)
        if total == 0:
            return
        squares = sum(map(mul, tokens, tokens))
        if total <= self._budget:  # the common case: the whole queue fits in the next iteration
            first = min([q.arrival_time_s for q in waiting]) if waiting else now_s
            if newcomer and now_s < first:
                first = now_s
            self._total_work = 0.5 * squares
            self._groups.append((1, total, self._total_work, first + self._offset))
            return
        self._cumulative = list(accumulate(tokens))
        if squares < _EXACT_INT:
            self._total_work = 0.5 * squares  # = the groups' running sum: every partial sum is exact
        else:
            self._total_work = list(self)[-1][2]

    def __bool__(self) -> bool:
        return self.total_tokens > 0

    def __iter__(self) -> Iterator[tuple[int, int, float, float]]:
        if not self._ready:
            self._prepare()
        groups = self._groups
        i = 0
        while i < len(groups) or self._next_group():
            yield groups[i]
            i += 1

    def _next_group(self) -> bool:
        """Compute the next group; False when every request is grouped."""
        lo, cumulative, budget = self._lo, self._cumulative, self._budget
        if lo >= len(cumulative):
            return False
        m = -(-cumulative[lo] // budget)
        hi = bisect_right(cumulative, m * budget, lo)
        chunk = self._tokens[lo:hi]
        self._work += 0.5 * sum(map(mul, chunk, chunk))
        total = self._total_tokens
        waiting = self._waiting
        now_s = self._now_s
        first = min([q.arrival_time_s for q in waiting[lo:hi]]) if lo < len(waiting) else now_s
        if hi > len(waiting) and now_s < first:  # the newcomer, arriving now, is in this group
            first = now_s
        end_tokens = m * budget if m * budget < total else total
        self._groups.append((m, end_tokens, self._work, first + self._offset))
        self._lo = hi
        return True


def _choose(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
    st = state_of(ctx)
    clocks = ctx.allowed_clocks_mhz
    top = len(clocks) - 1
    if snapshot.is_idle:
        # Idle is not a choice to dwell on: the first batch after it may move at once.
        st.clock_index, st.held_since_s = 0, -math.inf
        st.overloaded_since_s = math.nan  # an idle instance is a break in any overload
        st.carried_since_s = math.nan
        return ClockDecision(clocks[0], DecisionReason.IDLE, POLICY_NAME)
    predictor: ClockTable | None = ctx.predictor
    if predictor is None:
        st.carried_since_s = math.nan  # the load is not checked: a gap in a carried spell
        return _hold(
            st,
            top,
            snapshot.now_s,
            ClockDecision(clocks[top], DecisionReason.PREDICTOR_UNTRUSTED, POLICY_NAME),
        )
    x0, x1 = features(snapshot)
    opts = st.opts
    if not predictor_trusted(predictor, opts, x0, x1):
        st.carried_since_s = math.nan  # the load is not checked: a gap in a carried spell
        return _hold(
            st,
            top,
            snapshot.now_s,
            ClockDecision(clocks[top], DecisionReason.PREDICTOR_UNTRUSTED, POLICY_NAME),
        )
    has_batch = bool(snapshot.requests)
    latency = predictor.values(x0, x1) if has_batch else [0.0] * len(clocks)
    energy_model: ClockTable | None = ctx.power_model
    report: list[float] | None = None
    if energy_model is None:
        energy = [float(i) for i in range(len(clocks))]  # no energy model: rank lower clocks first
    else:
        if not has_batch:  # only a queue: rank clocks by a full-budget iteration
            x0 = float(opts.prefill_token_budget)
            x1 = 0.5 * x0 * x0
        energy = report = energy_model.values(x0, x1)
        idle_w = opts.idle_power_w
        if idle_w > 0.0:
            busy_s = latency if has_batch else predictor.values(x0, x1)
            energy = [e - idle_w * t for e, t in zip(report, busy_s, strict=True)]
    held = st.clock_index

    if ctx.phase is Phase.PREFILL:
        check = _prefill_checker(snapshot, st, predictor, latency, has_batch)
    else:
        check = _decode_checker(snapshot, st, predictor, latency)

    # Hot path: the least-energy clock is checked first and is usually feasible, so the clocks are ranked
    # only when it is not. ``index(min())`` is the first of equal energies, as the stable sort ranks them.
    cheapest = energy.index(min(energy))
    verdict = check(cheapest)
    queue_blocked = verdict == 2
    chosen = cheapest if verdict == 0 else -1
    if chosen < 0:
        for k in sorted(range(len(clocks)), key=energy.__getitem__):
            if k == cheapest:
                continue
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
        small_gain = energy[held] - energy[chosen] <= abs(energy[held]) * opts.hysteresis
        if dwelling or small_gain:
            return _decision(clocks, held, DecisionReason.HYSTERESIS, latency, report)
    if chosen == cheapest:
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
    """A feasibility test per clock index: 0 feasible, 1 the batch misses TTFT, 2 a queued or foreseen request
    does (or the clock cannot sustain the arrival rate)."""
    opts = st.opts
    held = st.clock_index
    change_s = opts.clock_change_latency_s
    budget = opts.prefill_token_budget
    if has_batch:
        st.note_prompts(snapshot)
        oldest = min([r.arrival_time_s for r in snapshot.requests])
        batch_slack = oldest + st.bound_s - snapshot.now_s
    else:
        batch_slack = math.inf
    rate = st.token_rate_tps = st.arrivals.update(snapshot) if st.arrivals is not None else 0.0
    groups = QueueGroups(snapshot, budget, st.bound_s)  # read only as far as the checks need
    newcomer = round(st.prompt_tokens) if opts.plan_for_newcomer else 0
    newcomer_work = 0.5 * newcomer * newcomer
    # Sustainable load: a full-budget iteration of mean-size prompts must take <= max_load * budget / rate.
    full_work = 0.5 * budget * max(st.prompt_tokens, 1.0)
    max_load = 1.0 - opts.safety_margin
    bound = st.bound_s
    rows = predictor.model.rows[predictor.segment_of(float(budget))]
    d = predictor.model.drift
    g0, g1, g2 = (d * g for g in predictor.model.gains)

    def check(k: int) -> int:
        done = latency[k] + (change_s if k != held else 0.0)
        if done > batch_slack:
            return 1
        if groups or newcomer or rate > 0.0:
            r0, r1, r2 = rows[k]
            c0, c1, c2 = g0 * r0, g1 * r1, g2 * r2  # the row's effective line, as in effective_row()
            for m, tokens, work, deadline in groups:
                if done + c0 * tokens + c1 * work + c2 * m > deadline:
                    return 2
            if rate * (c0 * budget + c1 * full_work + c2) > max_load * budget:
                return 2
            if newcomer:  # arriving now, served behind the queue with what arrives while this iteration runs
                expected = rate * done
                ahead = groups.total_tokens + newcomer + expected
                ahead_work = groups.total_work + newcomer_work + 0.5 * expected * st.prompt_tokens
                if done + c0 * ahead + c1 * ahead_work + c2 * math.ceil(ahead / budget) > bound:
                    return 2
        return 0

    return check


def _decode_checker(
    snapshot: BatchSnapshot, st: EcoFreqState, predictor: ClockTable, latency: list[float]
) -> Callable[[int], int]:
    """A feasibility test per clock index: 0 feasible, 1 the next iteration misses the ITL bound, 2 the clock
    neither carries the measured load nor may be time-shared, or a waiting request would miss its ITL (see
    module docstring)."""
    held = st.clock_index
    change_s = st.opts.clock_change_latency_s
    bound = st.bound_s
    carries = _load_checker(snapshot, st, predictor) if st.demand is not None else None

    def check(k: int) -> int:
        cost = latency[k] + (change_s if k != held else 0.0)
        if cost > bound:
            return 1
        return 2 if carries is not None and not carries(k) else 0

    return check


def _load_checker(
    snapshot: BatchSnapshot, st: EcoFreqState, predictor: ClockTable
) -> Callable[[int], bool] | None:
    """Whether clock index ``k`` carries the measured decode load, or may be time-shared because the backlog
    it builds stays within the ITL bound, and serves every waiting request within it; None when there is
    nothing to check yet (no load measured and no queue)."""
    demand = st.demand
    assert demand is not None
    demand.update(snapshot)
    batch = len(snapshot.requests)
    waiting = snapshot.waiting
    output = demand.output_tokens
    if output is None:
        # Nobody has left yet: the drain rate of a queue is unknown, so a queue means the max clock.
        st.carried_since_s = math.nan  # (the load is not checked: a gap in a carried spell)
        return (lambda k: False) if waiting else None
    opts = st.opts
    bound = st.bound_s
    arrival_rps = demand.rate_rps
    load_tps = arrival_rps * output  # the margin is in the ITL bound: not counted twice
    cap = float(opts.max_running_requests) if opts.max_running_requests > 0 else math.inf
    if waiting and batch:
        cap = min(cap, float(batch))  # requests wait: the instance runs all it may (slots or KV)
    if math.isinf(cap):
        cap = max(predictor.max_x0, float(batch), 1.0)
    if batch:  # the running batch's mean context stands for the batch at any size
        per_request_kv = snapshot.num_context_tokens / batch
    else:  # (a request's context grows by its output while it runs: half of it on average)
        per_request_kv = sum([q.prompt_tokens for q in waiting]) / len(waiting) + 0.5 * output
    now_s = snapshot.now_s
    since = demand.waiting_since_s
    waited = [now_s - since.get(q.request_id, now_s) for q in waiting] if waiting else []
    slots = float(max(batch, 1))
    top = int(cap)

    fastest = len(predictor.clocks_mhz) - 1
    itl_s = predictor.batch_value  # (clock index, KV tokens per request, batch size) -> predicted ITL (s)
    pace_s = (
        _debt_pace_s(
            snapshot, st, demand, itl_s(fastest, per_request_kv, slots), output, _spread(demand, output)
        )
        if _may_be_behind(snapshot, st, demand, output)
        else math.inf
    )

    def carried(k: int, lo: int) -> bool:
        """Whether clock ``k``'s largest in-bound batch ``lo`` (> 0) carries the load: ``lo / ITL(lo) >=
        load_tps``, which holds at once when ``lo / bound >= load_tps`` (ITL(lo) <= bound); largest_batch
        stops at such an ``lo``."""
        return lo / bound >= load_tps or lo / itl_s(k, per_request_kv, float(lo)) >= load_tps

    fastest_lo = predictor.largest_batch(fastest, per_request_kv, top, bound, load_tps)
    if fastest_lo and carried(fastest, fastest_lo):
        # The max clock carries the load: a break in an overload once that has held for a while (a lone
        # iteration is the estimate's own noise at the edge of capacity, see OVERLOAD_BREAK_SHARE).
        if math.isnan(st.carried_since_s):
            st.carried_since_s = now_s
        if now_s - st.carried_since_s >= OVERLOAD_BREAK_SHARE * demand.window_s:
            st.overloaded_since_s = math.nan
    else:
        st.carried_since_s = math.nan
        if math.isnan(st.overloaded_since_s):
            st.overloaded_since_s = now_s
    lasting_overload = now_s - st.overloaded_since_s >= demand.window_s  # False while NaN

    def carries(k: int) -> bool:
        # The max clock's largest in-bound batch is the one the overload check found.
        lo = fastest_lo if k == fastest else predictor.largest_batch(k, per_request_kv, top, bound, load_tps)
        if lo == 0:
            return False
        step_s = itl_s(k, per_request_kv, slots)
        if step_s > pace_s:  # too slow to bring a request that fell behind back within the bound
            return False
        free_rps = slots / (output * step_s)  # a slot frees when a running request finishes
        if not carried(k, lo):
            if lasting_overload:  # no faster clock drains what this one would build
                return False
            # The clock does not carry the load in steady state: time-share it with a faster one while
            # the backlog it builds stays within what the ITL bound absorbs. Over one request's life
            # (mean output x this iteration's ITL) the instance would hold Little's law's
            # ``arrival_rps * output * step_s`` requests (or the present batch, if more) plus those
            # waiting. Beyond the largest batch within the bound (``lo``) they either run above the
            # bound (``lo`` below the cap: rejected) or wait for a slot (``lo`` at the cap): then the
            # last of them, at that position in the queue, must still meet the ITL bound with its wait
            # spread over a short output. Past that, a faster clock drains the backlog.
            excess = max(slots, arrival_rps * output * step_s) + len(waited) - lo
            if excess > 0.0 and (lo < top or step_s + excess / free_rps / _spread(demand, output) > bound):
                return False
        if waited:
            spread = _spread(demand, output)
            for position, already_s in enumerate(waited, start=1):
                if step_s + (already_s + position / free_rps) / spread > bound:
                    return False
        return True

    return carries


def _spread(demand: DecodeDemand, output: float) -> float:
    """The gaps (tokens, >= 1) a waiting request's wait is spread over: its own, checked for a short output
    (``DecodeDemand.short_decode_tokens``; before any departure the mean output less prefill's token). Read
    where a queue, a backlog or a request behind the bound is checked, not at every decision."""
    short = demand.short_decode_tokens
    return max(short if short is not None else output - 1.0, 1.0)


def _may_be_behind(snapshot: BatchSnapshot, st: EcoFreqState, demand: DecodeDemand, output: float) -> bool:
    """Whether a running request may have fallen behind the ITL bound: for a request's life (``output``
    iterations at the bound) after the last decision with requests waiting or after an iteration measured
    above the bound, which this decision extends (``st.debt_until_s``). Only then does :func:`_debt_pace_s`
    scan the batch."""
    bound = st.bound_s
    now_s = snapshot.now_s
    if snapshot.waiting or demand.last_gap_s > bound:
        st.debt_until_s = now_s + output * bound
    return now_s < st.debt_until_s


def _debt_pace_s(
    snapshot: BatchSnapshot,
    st: EcoFreqState,
    demand: DecodeDemand,
    fastest_itl_s: float,
    output: float,
    short: float,
) -> float:
    """The slowest ITL (s) that brings every running request that fell behind the ITL bound (its mean ITL
    so far, its wait for admission included, above it: after an overload or a wait) back within it over its
    expected remaining tokens (the mean output less what it ran, at least ``short``), among those the max
    clock (``fastest_itl_s``) can still bring back; ``inf`` when none. A request's ITL is the mean of its
    gaps: one that ran slow needs faster gaps after, not just gaps within the bound. Called while
    :func:`_may_be_behind`."""
    bound = st.bound_s
    now_s = snapshot.now_s
    pace = math.inf
    for request in snapshot.requests:
        so_far = demand.itl_so_far(request.request_id, now_s)
        if so_far is None:
            continue
        elapsed_s, tokens = so_far
        behind_s = elapsed_s - bound * tokens
        if behind_s <= 0.0:
            continue
        needed = bound - behind_s / max(output - tokens, short)
        if fastest_itl_s <= needed < pace:
            pace = needed
    return pace


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
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    register(
        PolicyInfo(
            "clock",
            POLICY_NAME,
            "least predicted energy meeting TTFT for the whole queue (prefill) or ITL (decode); guardrails",
            _choose,
        )
    )
