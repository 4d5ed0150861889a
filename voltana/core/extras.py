"""Optional dependency groups (pip extras) and the one-line error when a command needs one that is missing.

The core install (``pip install voltana``) is what every engine process imports: the adapters, clock
policies, hardware drivers, telemetry and the simulator. The router's server stack (FastAPI, uvicorn, the
aiohttp client) is the ``router`` extra, needed by ``voltana router``, ``voltana emulate`` and
``voltana profile --engine``.
"""

from __future__ import annotations

import importlib

from voltana.core.errors import VoltanaError

ROUTER_EXTRA = "router"
ROUTER_MODULES = ("fastapi", "uvicorn", "aiohttp")
"""What the ``router`` extra installs that the commands import (pyproject.toml names the versions)."""


class MissingExtraError(VoltanaError, RuntimeError):
    """A command needs an optional dependency group that is not installed; ``str()`` names the pip command."""


def require_extra(command: str, extra: str = ROUTER_EXTRA, modules: tuple[str, ...] = ROUTER_MODULES) -> None:
    """Import ``modules`` or raise :class:`MissingExtraError` naming ``pip install 'voltana[<extra>]'``.

    ``command`` is what the user ran (``voltana router``), for the message."""
    missing: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"{command} needs {', '.join(missing)}, which the core install leaves out: "
            f"pip install 'voltana[{extra}]'"
        )
