"""Typed hook specifications: the one extension surface of voltana (built-ins use it too).

Markers are typed (as in tox) so decorated implementations keep their signatures for mypy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import pluggy

from voltana.core.contexts import DoctorCheck, PolicyInfo
from voltana.core.types import IterationRecord, RequestRecord

PROJECT_NAME = "voltana"
_F = TypeVar("_F", bound=Callable[..., object])
_spec_marker = pluggy.HookspecMarker(PROJECT_NAME)
_impl_marker = pluggy.HookimplMarker(PROJECT_NAME)


def _spec(func: _F) -> _F:
    marked: _F = _spec_marker(func)
    return marked


hookimpl = cast(Callable[[_F], _F], _impl_marker)
"""Decorator for hook implementations: ``@hookimpl def voltana_register_policies(register): ...``."""

DriverFactory = Callable[..., Any]
"""Builds a device group for an instance from ``HardwareConfig``; see ``voltana.hardware``."""


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
    """Register each clock and routing policy this plugin provides: ``register(PolicyInfo(kind, name,
    description, choose))``.

    ``choose`` is the policy itself (``ClockPolicy`` or ``RoutePolicy``, contracts in
    ``voltana.core.policies``). The controller, the simulator and the routers look the configured name up
    once when they start (an unknown name is one ``UnknownPolicyError`` listing the registered ones) and then
    call only that callable, once per iteration or routing decision. A name registered twice: the plugin
    registered last (third-party entry points load after the built-ins) wins.
    """


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
