"""Calling a registered routing policy by the name in its context, as the router and the simulator do, and
registering a test plugin with the process-wide plugin manager for the length of a test."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from voltana.core.contexts import RouteContext
from voltana.core.policies import route_policy
from voltana.core.types import InstanceState, RouteRequest
from voltana.plugins import get_plugin_manager


def choose_instance(
    hook: Any, *, request: RouteRequest, candidates: Sequence[InstanceState], ctx: RouteContext
) -> str | None:
    """The instance id the routing policy ``ctx.policy`` registered with ``hook``'s plugins picks."""
    return route_policy(hook, ctx.policy)(request, candidates, ctx)


@contextmanager
def registered_plugin(plugin: Any, name: str) -> Iterator[Any]:
    """``plugin`` registered with the process-wide plugin manager as ``name`` until the block ends."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(name=name)
