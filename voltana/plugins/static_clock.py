"""Static-clock baselines: ``static-max``, ``static-min`` and ``static`` (``options.static_clock_mhz``)."""

from __future__ import annotations

from collections.abc import Callable

from voltana.core.contexts import ClockContext, PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason

STATIC_POLICIES = ("static-max", "static-min", "static")


def static_clock_mhz(ctx: ClockContext) -> int:
    """The clock a static policy pins: max, min, or the allowed clock nearest ``options.static_clock_mhz``."""
    if ctx.policy == "static-max":
        return ctx.max_clock_mhz
    if ctx.policy == "static-min":
        return ctx.min_clock_mhz
    target = int(ctx.options.get("static_clock_mhz", ctx.max_clock_mhz))
    return min(ctx.allowed_clocks_mhz, key=lambda f: (abs(f - target), -f))


@hookimpl
def voltana_choose_clock(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision | None:
    if ctx.policy not in STATIC_POLICIES:
        return None
    return ClockDecision(static_clock_mhz(ctx), DecisionReason.STATIC, ctx.policy)


@hookimpl
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    register(PolicyInfo("clock", "static-max", "always the highest allowed clock (the usual default)"))
    register(PolicyInfo("clock", "static-min", "always the lowest allowed clock"))
    register(PolicyInfo("clock", "static", "a fixed clock: policy.options.static_clock_mhz"))
