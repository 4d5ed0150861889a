"""The ``voltana`` console script's entry point: imports nothing but the standard library before it starts
the app, so a Ctrl-C while the app and its plugins are still importing ends in one line and exit status 130
(the shell's convention for SIGINT), as it does once a command runs, never in a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Run :func:`voltana.cli.app.main`; a ``KeyboardInterrupt`` that reaches here prints one line."""
    try:
        from voltana.cli.app import main as run  # noqa: PLC0415 - inside the try: that is the point

        run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
