"""Building the pluggy plugin manager: built-in modules, then third-party entry points (allowlisted)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from voltana.core import hookspecs
from voltana.core.contexts import PolicyInfo
from voltana.core.errors import VoltanaError
from voltana.core.policies import policies_of

ENTRY_POINT_GROUP = "voltana"
ALLOWLIST_ENV = "VOLTANA_PLUGINS"


class PluginLoadError(VoltanaError, RuntimeError):
    """A third-party plugin failed to import or declares hooks voltana does not know."""


def allowed_entry_point_names(env: dict[str, str] | None = None) -> set[str] | None:
    """Names from ``VOLTANA_PLUGINS`` (comma-separated); None when unset, meaning all are allowed."""
    raw = (env if env is not None else dict(os.environ)).get(ALLOWLIST_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def make_plugin_manager(
    default_plugins: Iterable[str], load_entry_points: bool = True
) -> pluggy.PluginManager:
    """A manager with voltana's hookspecs, ``default_plugins`` (module paths) and allowlisted entry points.

    Entry points load after built-ins, so pluggy calls theirs first and a policy they register under a
    built-in name replaces the built-in (see ``voltana.core.policies.lookup_policy``).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_path in default_plugins:
        pm.register(importlib.import_module(module_path), name=module_path)
    if load_entry_points:
        allowed = allowed_entry_point_names()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"voltana plugin {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from exc
            pm.register(plugin, name=ep.name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"voltana plugin declares an unknown hook: {exc}") from exc
    return pm


def registered_policies(pm: pluggy.PluginManager) -> list[PolicyInfo]:
    """All policies the registered plugins register (the plugin registered last first; see
    ``voltana.core.policies``)."""
    return policies_of(pm.hook)
