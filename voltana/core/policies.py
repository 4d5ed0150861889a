"""Named policies: plugins register each clock or routing policy as a callable under its name, callers look
the configured one up once.

A plugin implements ``voltana_register_policies(register)`` and calls ``register(PolicyInfo(kind, name,
description, choose))`` once per policy it provides (as simonw/llm's ``register_models(register)``). The
frequency controller, the simulator, the HTTP router and the Ray Serve routers call :func:`clock_policy` or
:func:`route_policy` when they are built, keep the callable and call only it on every iteration or routing
decision: no per-iteration broadcast to every plugin, no plugin checking its own name.

Contracts of the callables (both run on hot paths: microseconds, never block):

- :data:`ClockPolicy` ``choose(snapshot, ctx) -> ClockDecision | None``: the clock for the iteration in
  ``snapshot`` (``ctx`` is the instance's :class:`ClockContext`); None abstains (the controller then uses the
  max clock).
- :data:`RoutePolicy` ``choose(request, candidates, ctx) -> str | None``: the ``instance_id`` among
  ``candidates`` (the routable :class:`InstanceState` of ``ctx.phase``, at least one) that serves ``request``;
  None (or an id not among them) makes the caller fall back to the least-loaded candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from voltana.core.config import ConfigError
from voltana.core.contexts import ALL_MODELS, ClockContext, ModelKind, PolicyInfo, PolicyKind, RouteContext
from voltana.core.errors import VoltanaError
from voltana.core.types import BatchSnapshot, ClockDecision, InstanceState, RouteRequest

ClockPolicy = Callable[[BatchSnapshot, ClockContext], ClockDecision | None]
"""A clock policy: ``choose(snapshot, ctx)`` -> the iteration's :class:`ClockDecision`, or None to abstain."""

RoutePolicy = Callable[[RouteRequest, Sequence[InstanceState], RouteContext], str | None]
"""A routing policy: ``choose(request, candidates, ctx)`` -> the chosen ``instance_id``, or None."""

_KIND_WORDS: dict[PolicyKind, str] = {"clock": "clock", "route": "routing"}


class UnknownPolicyError(ConfigError):
    """No registered plugin provides the named policy of that kind; the message lists the registered ones."""


class PolicyRegistrationError(VoltanaError, TypeError):
    """A plugin's ``voltana_register_policies`` failed or registered something that is not a policy."""


def policies_of(hook: Any) -> list[PolicyInfo]:
    """Every policy the plugins behind ``hook`` (a pluggy ``pm.hook``) register, in pluggy's call order: the
    plugin registered last first (third-party entry points before the built-ins).

    A hook relay without ``voltana_register_policies`` (a stand-in with no plugins) registers none. Raises
    :class:`PolicyRegistrationError` (one line) when a plugin's registration fails or registers something
    other than a ``PolicyInfo`` of kind ``clock`` or ``route`` with a callable ``choose``.
    """
    found: list[PolicyInfo] = []
    register_policies = getattr(hook, "voltana_register_policies", None)
    if register_policies is None:
        return found
    try:
        register_policies(register=found.append)
    except Exception as exc:
        raise PolicyRegistrationError(
            f"a plugin's voltana_register_policies failed ({type(exc).__name__}: {exc}); it must call "
            "register(PolicyInfo(kind, name, description, choose))"
        ) from exc
    for info in found:
        if not isinstance(info, PolicyInfo) or info.kind not in _KIND_WORDS or not callable(info.choose):
            raise PolicyRegistrationError(
                f"a plugin registered {info!r}; expected PolicyInfo(kind='clock' or 'route', name, "
                "description, choose) with a callable choose"
            )
        models = info.reads_models
        if not isinstance(models, frozenset) or not models <= ALL_MODELS:
            raise PolicyRegistrationError(
                f"policy {info.name!r} registered reads_models={models!r}; expected a frozenset of "
                f"{', '.join(repr(m) for m in sorted(ALL_MODELS))} (e.g. LATENCY_MODEL or NO_MODELS from "
                "voltana.core.contexts)"
            )
    return found


def lookup_policy(hook: Any, kind: PolicyKind, name: str) -> PolicyInfo:
    """The :class:`PolicyInfo` registered as ``name`` of ``kind``; the plugin registered last wins (a
    third-party plugin, loaded after the built-ins, may replace one of them under its name).

    Raises :class:`UnknownPolicyError` (a ``ConfigError``, one line) naming the registered policies of
    ``kind`` when none is called ``name``.
    """
    registered = [info for info in policies_of(hook) if info.kind == kind]
    for info in registered:
        if info.name == name:
            return info
    known = ", ".join(sorted({info.name for info in registered})) or "none"
    raise UnknownPolicyError(f"unknown {_KIND_WORDS[kind]} policy {name!r}; registered: {known}")


def reads_models(hook: Any, kind: PolicyKind, name: str) -> frozenset[ModelKind]:
    """The models the ``kind`` policy registered as ``name`` reads (:attr:`PolicyInfo.reads_models`);
    raises :class:`UnknownPolicyError`."""
    return lookup_policy(hook, kind, name).reads_models


def clock_policy(hook: Any, name: str) -> ClockPolicy:
    """The clock policy registered as ``name``; raises :class:`UnknownPolicyError`."""
    return cast(ClockPolicy, lookup_policy(hook, "clock", name).choose)


def route_policy(hook: Any, name: str) -> RoutePolicy:
    """The routing policy registered as ``name``; raises :class:`UnknownPolicyError`."""
    return cast(RoutePolicy, lookup_policy(hook, "route", name).choose)
