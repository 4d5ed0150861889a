"""Routing baselines registered as named policies: ``random``, ``round-robin``, ``least-loaded`` and
``predicted-ttft`` (prefill: the instance that would finish this prompt first).

Used by the simulator and the HTTP router alike. ``ctx.predictor`` is a latency model
(``predict_latency_s(snapshot, clock_mhz)``) or a mapping from instance id to one; ``ctx.options`` may give
``prefill_token_budget`` (tokens per prefill iteration, default 8192) and ``max_clock_mhz`` (the clock the
prediction assumes; else the instance's current clock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from voltana.core.contexts import PolicyInfo, RouteContext
from voltana.core.hookspecs import hookimpl
from voltana.core.policies import RoutePolicy
from voltana.core.types import BatchSnapshot, InstanceState, Phase, RouteRequest, ScheduledRequest

ROUTING_POLICIES = ("random", "round-robin", "least-loaded", "predicted-ttft")
DEFAULT_PREFILL_TOKEN_BUDGET = 8192
"""vLLM's and SGLang's default tokens per prefill iteration (``max_num_batched_tokens`` / chunked prefill)."""


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
    total_s = 0.0
    done = 0
    while done < tokens:
        chunk = min(token_budget, tokens - done)
        request = ScheduledRequest("route", chunk, done, 0.0)
        snapshot = BatchSnapshot(phase, (request,), (), 0.0, chunk, done)
        total_s += float(predictor.predict_latency_s(snapshot, clock_mhz))
        done += chunk
    return total_s


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
    for name, description, chooser in (
        ("random", "uniformly random instance (seeded)", choose_random),
        ("round-robin", "instances in turn", choose_round_robin),
        ("least-loaded", "fewest running + waiting requests, then pending tokens", choose_least_loaded),
        ("predicted-ttft", "prefill: earliest predicted prefill completion", choose_predicted_ttft),
    ):
        register(PolicyInfo("route", name, description, route_policy_of(chooser)))
