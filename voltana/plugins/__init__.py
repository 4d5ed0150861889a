"""Built-in plugins and the process-wide plugin manager.

Built-in behaviour is ordinary plugins registered through the same hooks a third party uses
(``voltana`` entry-point group, filtered by ``VOLTANA_PLUGINS``).
"""

from __future__ import annotations

import threading

import pluggy

from voltana.core.plugin_manager import make_plugin_manager

DEFAULT_PLUGINS: tuple[str, ...] = (
    "voltana.plugins.doctor",
    "voltana.plugins.static_clock",
    "voltana.plugins.hardware",
    "voltana.plugins.ecofreq",
    "voltana.plugins.paper_policy",
    "voltana.plugins.telemetry",
    "voltana.plugins.routing",
    "voltana.plugins.ecoroute",
)

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use (idempotent, thread-safe)."""
    global _pm
    with _lock:
        if _pm is None:
            _pm = make_plugin_manager(DEFAULT_PLUGINS)
        return _pm


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests, or after changing ``VOLTANA_PLUGINS``)."""
    global _pm
    with _lock:
        _pm = None
