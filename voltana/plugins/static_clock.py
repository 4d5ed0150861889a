"""Static-clock baselines: ``static-max``, ``static-min`` and ``static`` (``options.static_clock_mhz``)."""

from __future__ import annotations

from collections.abc import Callable

from voltana.core.contexts import NO_MODELS, ClockContext, PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason

STATIC_POLICIES = ("static-max", "static-min", "static")


def nearest_clock_mhz(ctx: ClockContext) -> int:
    """The allowed clock nearest ``options.static_clock_mhz`` (ties: the higher; unset: the max clock)."""
    target = int(ctx.options.get("static_clock_mhz", ctx.max_clock_mhz))
    return min(ctx.allowed_clocks_mhz, key=lambda f: (abs(f - target), -f))


def static_clock_mhz(ctx: ClockContext) -> int:
    """The clock the static policy ``ctx.policy`` pins: max, min, or the one nearest the configured clock."""
    if ctx.policy == "static-max":
        return ctx.max_clock_mhz
    if ctx.policy == "static-min":
        return ctx.min_clock_mhz
    return nearest_clock_mhz(ctx)


def choose_static_max(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
    """``static-max``: always the highest allowed clock."""
    return ClockDecision(ctx.max_clock_mhz, DecisionReason.STATIC, "static-max")


def choose_static_min(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
    """``static-min``: always the lowest allowed clock."""
    return ClockDecision(ctx.min_clock_mhz, DecisionReason.STATIC, "static-min")


def choose_static(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
    """``static``: the allowed clock nearest ``options.static_clock_mhz``."""
    return ClockDecision(nearest_clock_mhz(ctx), DecisionReason.STATIC, "static")


@hookimpl
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    register(
        PolicyInfo(
            "clock",
            "static-max",
            "always the highest allowed clock (the usual default)",
            choose_static_max,
            reads_models=NO_MODELS,
        )
    )
    register(
        PolicyInfo(
            "clock",
            "static-min",
            "always the lowest allowed clock",
            choose_static_min,
            reads_models=NO_MODELS,
        )
    )
    register(
        PolicyInfo(
            "clock",
            "static",
            "a fixed clock: policy.options.static_clock_mhz",
            choose_static,
            reads_models=NO_MODELS,
        )
    )
