"""Routing baselines registered as named policies: ``random``, ``round-robin``, ``least-loaded``,
``predicted-ttft`` (prefill: the instance that would finish this prompt first) and ``energy-ttft`` (prefill:
a prompt joins a busy instance's forming batch where the TTFT bound is exact and sharing saves energy, else
``predicted-ttft``; see :func:`choose_energy_ttft`).

Used by the simulator and the HTTP router alike. ``ctx.predictor`` is a latency model
(``predict_latency_s(snapshot, clock_mhz)``) or a mapping from instance id to one; ``ctx.options`` may give
``prefill_token_budget`` (tokens per prefill iteration, default 8192), ``max_clock_mhz`` (the clock the
prediction assumes; else the instance's current clock) and ``min_join_saving`` (``energy-ttft``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from voltana.core.contexts import ALL_MODELS, LATENCY_MODEL, NO_MODELS, PolicyInfo, RouteContext
from voltana.core.hookspecs import hookimpl
from voltana.core.policies import RoutePolicy
from voltana.core.types import (
    DEFAULT_PREFILL_TOKEN_BUDGET,
    BatchSnapshot,
    InstanceState,
    Phase,
    RouteRequest,
    ScheduledRequest,
)

ROUTING_POLICIES = ("random", "round-robin", "least-loaded", "predicted-ttft", "energy-ttft")


def healthy(candidates: Sequence[InstanceState]) -> list[InstanceState]:
    """The healthy candidates, or all of them when none is healthy (a non-empty list stays non-empty)."""
    alive = [c for c in candidates if c.healthy]
    return alive or list(candidates)


def model_for(source: Any | None, instance_id: str) -> Any | None:
    """The model of ``instance_id`` from ``source``: one model for all, or a mapping id -> model."""
    if isinstance(source, Mapping):
        return source.get(instance_id)
    return source


def predictor_for(ctx: RouteContext, instance_id: str) -> Any | None:
    """The latency model of ``instance_id`` from ``ctx.predictor``."""
    return model_for(ctx.predictor, instance_id)


def predicted_prefill_s(
    predictor: Any, tokens: int, token_budget: int, clock_mhz: int, phase: Phase = Phase.PREFILL
) -> float:
    """Predicted time to prefill ``tokens`` prompt tokens, ``token_budget`` tokens per iteration (s).

    One prediction per chunk, or the predictor's own closed form when it has one (EcoPred's
    ``predict_prefill_s``): under overload the pending tokens of an instance run into millions.
    """
    closed_form = getattr(predictor, "predict_prefill_s", None) if phase is Phase.PREFILL else None
    if closed_form is not None:
        return float(closed_form(tokens, token_budget, clock_mhz))
    return sum(
        float(predictor.predict_latency_s(s, clock_mhz)) for s in prefill_chunks(tokens, token_budget, phase)
    )


def prefill_chunks(tokens: int, token_budget: int, phase: Phase = Phase.PREFILL) -> Iterator[BatchSnapshot]:
    """The iterations that prefill ``tokens`` prompt tokens, ``token_budget`` new tokens each (chunk ``i``
    over the ``i x token_budget`` tokens before it)."""
    done = 0
    while done < tokens:
        chunk = min(token_budget, tokens - done)
        request = ScheduledRequest("route", chunk, done, 0.0)
        yield BatchSnapshot(phase, (request,), (), 0.0, chunk, done)
        done += chunk


def predicted_ttft_s(state: InstanceState, request: RouteRequest, ctx: RouteContext) -> float:
    """Predicted time until ``request``'s prefill ends on ``state`` (s); token count when no predictor."""
    tokens = state.pending_prompt_tokens + request.input_tokens
    predictor = predictor_for(ctx, state.instance_id)
    clock_mhz = ctx.options.get("max_clock_mhz") or state.sm_clock_mhz
    if predictor is None or clock_mhz is None:
        return float(tokens)
    budget = int(ctx.options.get("prefill_token_budget", DEFAULT_PREFILL_TOKEN_BUDGET))
    return predicted_prefill_s(predictor, tokens, budget, int(clock_mhz))


def _load_key(state: InstanceState) -> tuple[float, ...]:
    return (
        state.num_running + state.num_waiting,
        state.pending_prompt_tokens,
        state.kv_tokens / state.kv_capacity_tokens if state.kv_capacity_tokens else state.kv_tokens,
    )


def choose_random(request: RouteRequest, candidates: list[InstanceState], ctx: RouteContext) -> str:
    """Uniformly at random with the context's seeded generator."""
    return ctx.rng.choice(candidates).instance_id


def choose_round_robin(request: RouteRequest, candidates: list[InstanceState], ctx: RouteContext) -> str:
    """Cycle through the candidates in the order given (counter kept in ``ctx.state``)."""
    turn = int(ctx.state.get("round_robin_next", 0))
    ctx.state["round_robin_next"] = turn + 1
    return candidates[turn % len(candidates)].instance_id


def choose_least_loaded(request: RouteRequest, candidates: list[InstanceState], ctx: RouteContext) -> str:
    """Fewest requests running + waiting, then fewest pending prompt tokens, then lowest KV usage."""
    return min(candidates, key=_load_key).instance_id


def choose_predicted_ttft(request: RouteRequest, candidates: list[InstanceState], ctx: RouteContext) -> str:
    """The instance whose predicted prefill completion of this request is earliest (ties: least loaded)."""
    return min(candidates, key=lambda s: (predicted_ttft_s(s, request, ctx), *_load_key(s))).instance_id


def predicted_prefill_j(
    energy: Any, latency: Any, tokens: int, token_budget: int, clock_mhz: int, idle_w: float
) -> float:
    """Predicted energy above idle power of prefilling ``tokens`` prompt tokens, ``token_budget`` tokens per
    iteration, at ``clock_mhz`` (J): per chunk, the energy model's prediction less ``idle_w`` x the latency
    model's (an idle GPU draws ``idle_w`` anyway)."""
    return sum(
        float(energy.predict_energy_j(s, clock_mhz)) - idle_w * float(latency.predict_latency_s(s, clock_mhz))
        for s in prefill_chunks(tokens, token_budget)
    )


def prefill_marginal_j(
    state: InstanceState, request: RouteRequest, ctx: RouteContext, clock_mhz: int
) -> float:
    """Predicted extra energy (J, above idle) of ``request``'s prompt on ``state`` at ``clock_mhz``: on a busy
    instance it joins the prompts queued there (their batch pays the per-iteration cost: overhead and the
    weight stream), ``E(pending + x) - E(pending)``; on an idle one it runs alone, ``E(x)``. Without an
    energy model: 0 on a busy instance, 1 on an idle one (the same order)."""
    busy = is_busy(state)
    energy = model_for(ctx.power_model, state.instance_id)
    latency = predictor_for(ctx, state.instance_id)
    if energy is None or latency is None:
        return 0.0 if busy else 1.0
    budget = int(ctx.options.get("prefill_token_budget", DEFAULT_PREFILL_TOKEN_BUDGET))
    idle_w = float(ctx.options.get("idle_power_w", 0.0))
    pending = state.pending_prompt_tokens if busy else 0
    after = predicted_prefill_j(energy, latency, pending + request.input_tokens, budget, clock_mhz, idle_w)
    return after - predicted_prefill_j(energy, latency, pending, budget, clock_mhz, idle_w)


def is_busy(state: InstanceState) -> bool:
    """True when the instance runs or holds a prompt (a new one waits for its running iteration)."""
    return state.num_running + state.num_waiting > 0


MIN_JOIN_SAVING = 0.05
"""Least share of a prompt's energy alone that joining a busy instance must save (``energy-ttft``).

Joining saves the per-iteration cost (launch overhead, the weight stream), which matters for a memory-bound
prompt only: on the simulated A100 (``voltana.hardware.simulated``), Llama-3.1-8B at 1005 MHz, a 100-token
prompt added to a 500-2000-token batch costs 36-55% less than alone, a 1000-token one 7% less, a 4000-token
one 5%. 5% is also the error within which a profile recovers a GPU's energies (MAPE per clock,
docs/guides/profiling.md): a smaller predicted saving is within the model's error, not worth a wait behind
the running iteration while another instance sits idle. Measured effect: docs/concepts/policies.md."""


def _join_saving(
    state: InstanceState, request: RouteRequest, ctx: RouteContext, low: int, added_j: float
) -> float:
    """Share of the prompt's energy alone at ``low`` that joining busy ``state`` saves, the join priced at the
    clock the instance runs (``added_j``: :func:`prefill_marginal_j` at :func:`_running_clock`); from
    predicted latencies at ``low`` when there is no energy model (one clock: energy follows time). 1.0 when
    nothing can be predicted."""
    energy = model_for(ctx.power_model, state.instance_id)
    latency = predictor_for(ctx, state.instance_id)
    if latency is None:
        return 1.0
    budget = int(ctx.options.get("prefill_token_budget", DEFAULT_PREFILL_TOKEN_BUDGET))
    x, pending = request.input_tokens, state.pending_prompt_tokens
    if energy is None:
        alone = predicted_prefill_s(latency, x, budget, low)
        added = predicted_prefill_s(latency, pending + x, budget, low) - predicted_prefill_s(
            latency, pending, budget, low
        )
    else:
        idle_w = float(ctx.options.get("idle_power_w", 0.0))
        alone = predicted_prefill_j(energy, latency, x, budget, low, idle_w)
        added = added_j
    return 1.0 - added / alone if alone > 0 else 0.0


def _running_clock(state: InstanceState, low: int) -> int:
    """The clock a prompt joining ``state`` will likely run at: a busy instance's current one (EcoFreq
    raised it for the prompts there), at least ``low``; ``low`` on an idle instance."""
    if not is_busy(state) or state.sm_clock_mhz is None:
        return low
    return max(low, int(state.sm_clock_mhz))


def choose_energy_ttft(request: RouteRequest, candidates: list[InstanceState], ctx: RouteContext) -> str:
    """Prefill, energy-aware within the TTFT: a prompt joins a busy instance's forming batch where that
    provably keeps the TTFT and saves energy, else runs where it finishes first (``predicted-ttft``).

    Rule (``x``: this prompt's tokens, ``P``: the instance's pending prompt tokens, running and waiting,
    ``L``: predicted prefill time at the *lowest* allowed clock, ``B``: ``prefill_token_budget``, TTFT budget
    ``ctx.slo.ttft_s x (1 - safety_margin)``):

    1. An idle instance *fits* when ``L(x)`` is within the TTFT budget.
    2. A busy instance fits only where the prompt rides the batch forming now and the TTFT bound is exact:
       ``P + x <= B`` and ``L(P) + L(P + x)`` within the TTFT budget. Why it bounds the TTFT: the running
       iteration holds at most ``P`` tokens (``P < B``: it had room, so every prompt waiting there arrived
       after it started) and runs at a clock at least the lowest, so it ends within ``L(P)``; the next
       iteration then holds every waiting prompt and this one, at most ``P + x <= B`` tokens in one
       iteration, done within ``L(P + x)``. That bounds this prompt's TTFT and that of the prompts already
       waiting there, which finish with it; no clock step-up is needed for it.
    3. A busy instance is kept only if joining saves at least ``min_join_saving`` (option; default
       :data:`MIN_JOIN_SAVING`) of the prompt's energy alone at the lowest clock, the join priced at the
       clock the instance runs now (EcoFreq may have raised it: a joined prompt runs there). A compute-bound
       prompt saves a few percent by sharing, not worth a wait that leaves an idle instance idle.
    4. Among the kept instances, the least added predicted energy (:func:`prefill_marginal_j`, at the clock
       of step 3; an idle one at the lowest); ties: the earliest predicted completion, then the least loaded.
       When none is kept: the earliest predicted completion at the top clock (``predicted-ttft``).

    Needs ``ctx.predictor`` and ``options["allowed_clocks_mhz"]``; without them it is ``predicted-ttft``.
    """
    clocks = ctx.options.get("allowed_clocks_mhz")
    if not clocks:
        return choose_predicted_ttft(request, candidates, ctx)
    low = int(clocks[0])
    budget_s = ctx.slo.ttft_s * (1.0 - float(ctx.options.get("safety_margin", 0.1)))
    token_budget = int(ctx.options.get("prefill_token_budget", DEFAULT_PREFILL_TOKEN_BUDGET))
    min_saving = float(ctx.options.get("min_join_saving", MIN_JOIN_SAVING))
    kept: list[tuple[float, InstanceState]] = []  # (added energy at the clock it runs, instance)
    for state in candidates:
        predictor = predictor_for(ctx, state.instance_id)
        if predictor is None:
            return choose_predicted_ttft(request, candidates, ctx)
        if not is_busy(state):
            if predicted_prefill_s(predictor, request.input_tokens, token_budget, low) <= budget_s:
                kept.append((prefill_marginal_j(state, request, ctx, low), state))
            continue
        pending = state.pending_prompt_tokens
        if (
            pending + request.input_tokens <= token_budget
            and predicted_prefill_s(predictor, pending, token_budget, low)
            + predicted_prefill_s(predictor, pending + request.input_tokens, token_budget, low)
            <= budget_s
        ):
            added_j = prefill_marginal_j(state, request, ctx, _running_clock(state, low))
            if _join_saving(state, request, ctx, low, added_j) >= min_saving:
                kept.append((added_j, state))
    if not kept:
        return choose_predicted_ttft(request, candidates, ctx)
    return min(kept, key=lambda k: (k[0], predicted_ttft_s(k[1], request, ctx), *_load_key(k[1])))[
        1
    ].instance_id


Chooser = Callable[[RouteRequest, list[InstanceState], RouteContext], str]
"""A routing policy: picks the ``instance_id`` for a request among healthy candidates (never empty)."""


def route_policy_of(chooser: Chooser) -> RoutePolicy:
    """``chooser`` as a registered :data:`~voltana.core.policies.RoutePolicy`: it sees the healthy candidates
    only (all of them when none is healthy) and is not called without candidates (None)."""

    def choose(request: RouteRequest, candidates: Sequence[InstanceState], ctx: RouteContext) -> str | None:
        if not candidates:
            return None
        return chooser(request, healthy(candidates), ctx)

    choose.__name__ = choose.__qualname__ = getattr(chooser, "__name__", "choose")
    choose.__doc__ = chooser.__doc__
    return choose


@hookimpl
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    for name, description, chooser, reads_models in (
        ("random", "uniformly random instance (seeded)", choose_random, NO_MODELS),
        ("round-robin", "instances in turn", choose_round_robin, NO_MODELS),
        ("least-loaded", "fewest running + waiting requests, then pending tokens", choose_least_loaded,
         NO_MODELS),
        ("predicted-ttft", "prefill: earliest predicted prefill completion", choose_predicted_ttft,
         LATENCY_MODEL),
        ("energy-ttft", "prefill: least added energy among those meeting the TTFT", choose_energy_ttft,
         ALL_MODELS),
    ):  # fmt: skip
        register(PolicyInfo("route", name, description, route_policy_of(chooser), reads_models))
