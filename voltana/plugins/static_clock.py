"""Static-clock baselines: ``static-max``, ``static-min`` and ``static`` (``options.static_clock_mhz``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass

from voltana.core.config import ConfigInt, read_options
from voltana.core.contexts import NO_MODELS, ClockContext, PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason

STATIC_POLICIES = ("static-max", "static-min", "static")
_STATE_KEY = "static"


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="ignore", use_attribute_docstrings=True))
class StaticClockOptions:
    """The ``static`` policy's knob in ``policy.options`` (other keys belong to other policies)."""

    static_clock_mhz: ConfigInt | None = Field(default=None, gt=0)
    """The clock to pin (MHz): the allowed clock nearest it (ties: the higher); unset: the max clock."""

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> StaticClockOptions:
        """The knob of ``options``; raises :class:`~voltana.core.config.ConfigError` (one line naming the
        key, what it must be and what it got: ``VOLTANA_POLICY__OPTIONS__STATIC_CLOCK_MHZ=1200.0`` is read
        as 1200, ``true`` or ``1200.5`` is refused)."""
        return read_options(_ADAPTER, options)


_ADAPTER = TypeAdapter(StaticClockOptions)


def nearest_clock_mhz(ctx: ClockContext) -> int:
    """The allowed clock nearest ``options.static_clock_mhz`` (ties: the higher; unset: the max clock), the
    knob read once per instance (:class:`StaticClockOptions`; raises ``ConfigError``)."""
    target = ctx.state.get(_STATE_KEY)
    if target is None:
        target = StaticClockOptions.from_mapping(ctx.options).static_clock_mhz or ctx.max_clock_mhz
        ctx.state[_STATE_KEY] = target
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
