"""The ``voltana`` command line: the typer app (:mod:`voltana.cli.app`), one module per command, and the state
commands share (:mod:`voltana.cli.state`). Commands register through the ``voltana_register_commands`` hook,
the built-in ones like a third party's: :func:`build_app` returns the app with all of them.
"""

from voltana.cli.app import build_app, main

__all__ = ["build_app", "main"]
