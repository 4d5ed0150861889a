"""The ``voltana`` typer app: the root options, then every command registered through the
``voltana_register_commands`` hook (the built-in command modules below, then third-party plugins).

Command modules import their heavy stacks (the simulator, the router's server, the profiler) when the command
runs, so ``voltana --help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from voltana import __version__
from voltana.cli import clockd, config, doctor, emulate, profile, router, simulate
from voltana.cli.state import CliState
from voltana.core.errors import VoltanaError
from voltana.plugins import get_plugin_manager

console = Console()
err_console = Console(stderr=True)

BUILTIN_COMMANDS: tuple[ModuleType, ...] = (config, doctor, clockd, simulate, router, emulate, profile)
"""Modules whose ``voltana_register_commands`` add the built-in commands (in ``--help`` order)."""

app = typer.Typer(
    name="voltana",
    help="Energy middleware for LLM serving: per-iteration GPU clock control for P/D vLLM and SGLang.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"voltana {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file (else $VOLTANA_CONFIG).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = CliState(config)


def build_app() -> typer.Typer:
    """The app with the built-in and every plugin's commands added (once per process); every command's
    callback is :func:`interruptible`."""
    if not getattr(app, "_voltana_plugins_added", False):
        pm = get_plugin_manager()
        for module in reversed(BUILTIN_COMMANDS):  # pluggy calls the last registered first
            if not pm.is_registered(module):
                pm.register(module, name=module.__name__)
        pm.hook.voltana_register_commands(cli=app)
        for command in app.registered_commands:
            if command.callback is not None:
                command.callback = interruptible(command.callback)
        app._voltana_plugins_added = True  # type: ignore[attr-defined]
    return app


def interruptible(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` with a Ctrl-C it does not handle itself ending in one line, ``interrupted``, and exit
    status 130 (typer would exit 130 without a word). A command that says what it kept or undid catches
    ``KeyboardInterrupt`` itself (``voltana profile``, the benchmarks)."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return run


def main() -> None:
    """Console-script entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        build_app()()
    except VoltanaError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
