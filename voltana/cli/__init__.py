"""The ``voltana`` command line: the typer app (:mod:`voltana.cli.app`), one module per command, and the state
commands share (:mod:`voltana.cli.state`). Commands register through the ``voltana_register_commands`` hook,
the built-in ones like a third party's: :func:`build_app` returns the app with all of them.

The package itself imports nothing: the console script's entry point (:mod:`voltana.cli.launch`) starts
before the app is imported, so that a Ctrl-C during that import is one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voltana.cli.app import build_app, main

__all__ = ["build_app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from voltana.cli import app  # noqa: PLC0415 - lazy: the package imports nothing (see above)

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
