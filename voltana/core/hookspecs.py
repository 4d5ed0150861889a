"""Typed hook specifications: the one extension surface of voltana (built-ins use it too).

Markers are typed (as in tox) so decorated implementations keep their signatures for mypy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import pluggy

from voltana.core.contexts import ClockContext, DoctorCheck, PolicyInfo, RouteContext
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    InstanceState,
    IterationRecord,
    RequestRecord,
    RouteRequest,
)

PROJECT_NAME = "voltana"
_F = TypeVar("_F", bound=Callable[..., object])
_spec_marker = pluggy.HookspecMarker(PROJECT_NAME)
_impl_marker = pluggy.HookimplMarker(PROJECT_NAME)


def _spec(func: _F) -> _F:
    marked: _F = _spec_marker(func)
    return marked


def _first_result_spec(func: _F) -> _F:
    marked: _F = _spec_marker(firstresult=True)(func)
    return marked


hookimpl = cast(Callable[[_F], _F], _impl_marker)
"""Decorator for hook implementations: ``@hookimpl def voltana_choose_clock(...)``."""

DriverFactory = Callable[..., Any]
"""Builds a device group for an instance from ``HardwareConfig``; see ``voltana.hardware``."""


@_first_result_spec
def voltana_choose_clock(snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision | None:
    """Choose the SM clock for the iteration in ``snapshot``.

    Return None unless ``ctx.policy`` names a policy this plugin implements (or it deliberately overrides).
    Called once per iteration on the hot path: it must cost microseconds and never block.
    """


@_first_result_spec
def voltana_choose_instance(
    request: RouteRequest, candidates: Sequence[InstanceState], ctx: RouteContext
) -> str | None:
    """Choose the ``instance_id`` (among healthy ``candidates`` of ``ctx.phase``) that serves ``request``.

    Return None unless ``ctx.policy`` names a routing policy this plugin implements.
    """


@_spec
def voltana_iteration_finished(record: IterationRecord) -> None:
    """Observe a finished iteration (predictor update, telemetry). Must not block."""


@_spec
def voltana_request_finished(record: RequestRecord) -> None:
    """Observe one request's finished phase on one instance (telemetry, accounting)."""


@_spec
def voltana_register_hardware(register: Callable[[str, DriverFactory], None]) -> None:
    """Register GPU drivers by vendor name: ``register("nvidia", factory)``."""


@_spec
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    """Declare the clock and routing policies this plugin implements."""


@_spec
def voltana_register_commands(cli: Any) -> None:
    """Add subcommands to the ``voltana`` typer app ``cli``."""


@_spec
def voltana_doctor_checks(config: Any, try_lock: bool) -> list[DoctorCheck]:
    """Return the checks this plugin contributes to ``voltana doctor``.

    ``config``: the validated config, or None when it does not validate. ``try_lock``: the user asked for
    checks that change device state briefly (``voltana doctor --try-lock``: lock one GPU's clock at its
    current value, then reset it); without it, checks must only read. A check with ``ok=False`` makes
    ``voltana doctor`` exit 1. Implementations may omit ``try_lock`` from their signature.
    """
    raise NotImplementedError
