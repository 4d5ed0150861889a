"""Building the pluggy plugin manager: built-in modules, then third-party entry points (allowlisted)."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from voltana.core import hookspecs
from voltana.core.contexts import PolicyInfo
from voltana.core.errors import VoltanaError
from voltana.core.policies import policies_of

logger = logging.getLogger(__name__)

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
    default_plugins = tuple(default_plugins)
    for module_path in default_plugins:
        pm.register(importlib.import_module(module_path), name=module_path)
    loaded: list[str] = []
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
            loaded.append(ep.name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or "?"
        others = ",".join(n for n in loaded if n != name)
        raise PluginLoadError(
            f"voltana plugin declares an unknown hook: {exc}; to run without plugin {name!r}, list the "
            f"plugins to load in VOLTANA_PLUGINS (e.g. VOLTANA_PLUGINS={others}; an empty value loads "
            "none; see docs/plugins.md)"
        ) from exc
    _warn_replaced_builtins(pm, default_plugins)
    return pm


def _warn_replaced_builtins(pm: pluggy.PluginManager, default_plugins: tuple[str, ...]) -> None:
    """Log one WARNING per built-in policy a third-party plugin registers again under the same name and kind
    (it replaces the built-in, e.g. the simulator's ``static-max`` baseline). A registration that fails is
    left to :func:`voltana.core.policies.policies_of`, which reports it."""
    caller = getattr(pm.hook, "voltana_register_policies", None)
    if caller is None:
        return
    builtin: set[tuple[str, str]] = set()
    third_party: list[tuple[str, str, str]] = []
    for impl in caller.get_hookimpls():
        found: list[PolicyInfo] = []
        try:
            impl.function(register=found.append)
        except Exception:  # reported by policies_of with its one line
            continue
        keys = [(info.kind, info.name) for info in found if isinstance(info, PolicyInfo)]
        if impl.plugin_name in default_plugins:
            builtin.update(keys)
        else:
            third_party.extend((impl.plugin_name, kind, name) for kind, name in keys)
    for plugin, kind, name in third_party:
        if (kind, name) in builtin:
            logger.warning(
                "voltana plugin %r replaces the built-in %s policy %r (the plugin loaded last wins the name)",
                plugin,
                kind,
                name,
            )


def registered_policies(pm: pluggy.PluginManager) -> list[PolicyInfo]:
    """All policies the registered plugins register (the plugin registered last first; see
    ``voltana.core.policies``)."""
    return policies_of(pm.hook)
