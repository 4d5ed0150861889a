"""The ``voltana`` command line: built-in commands here, more from plugins (``voltana_register_commands``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from voltana import __version__
from voltana.core.config import ConfigError, LoadedConfig, effective_items, load_config
from voltana.core.errors import VoltanaError
from voltana.core.plugin_manager import registered_policies

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="voltana",
    help="Energy middleware for LLM serving: per-iteration GPU clock control for P/D vLLM and SGLang.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


class CliState:
    """Options of the top-level callback, shared with subcommands through ``ctx.obj``."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._loaded: LoadedConfig | None = None

    def loaded(self) -> LoadedConfig:
        """The validated config (loaded once); raises ConfigError on a user mistake."""
        if self._loaded is None:
            self._loaded = load_config(self.config_path)
        return self._loaded


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


def cli_state(ctx: typer.Context) -> CliState:
    """The root options for a subcommand (works for plugin commands too)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(None)
    return root.obj


def validate_policy_names(loaded: LoadedConfig) -> None:
    """Raise ConfigError when a configured policy name is not provided by any registered plugin."""
    from voltana.plugins import get_plugin_manager

    known = registered_policies(get_plugin_manager())
    policy = loaded.config.policy
    for key, kind, name in (
        ("policy.clock", "clock", policy.clock),
        ("policy.prefill_route", "route", policy.prefill_route),
        ("policy.decode_route", "route", policy.decode_route),
    ):
        names = sorted({p.name for p in known if p.kind == kind})
        if names and name not in names:
            raise ConfigError(
                f"invalid config: {key} = {name!r} (from {loaded.source_of(key)}): "
                f"unknown {kind} policy; known: {', '.join(names)}"
            )


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the effective configuration and where each value came from."""
    loaded = cli_state(ctx).loaded()
    validate_policy_names(loaded)
    rows = effective_items(loaded)
    if as_json:
        console.print_json(json.dumps([{"key": k, "value": v, "source": s} for k, v, s in rows]))
        return
    table = Table(title=f"voltana config ({loaded.path or 'no file'})")
    table.add_column("key", style="cyan")
    table.add_column("value")
    table.add_column("source", style="dim")
    for key, value, source in rows:
        table.add_row(key, json.dumps(value), source)
    console.print(table)


@app.command()
def doctor(
    ctx: typer.Context,
    try_lock: Annotated[
        bool,
        typer.Option(
            "--try-lock",
            help=(
                "Also lock GPU 0's SM clock at its current value and reset it (proves the driver lets you). "
                "Without voltana clockd, do not run it while an engine drives that GPU: the reset also ends "
                "the engine's clock lock (NVML cannot tell that a lock is held); through clockd a held lock "
                "is refused, not reset."
            ),
        ),
    ] = False,
) -> None:
    """Report engines, GPU libraries, visible devices and clock-locking privileges, with fixes.

    Exits 1 when any check is a problem, 0 otherwise.
    """
    from voltana.plugins import get_plugin_manager

    try:
        config: Any = cli_state(ctx).loaded().config
        config_row = ("config", "valid", True, "ok", "")
    except ConfigError as exc:
        config = None
        config_row = ("config", "valid", False, str(exc), "fix the key named above")
    table = Table(title="voltana doctor")
    for column in ("section", "check", "status", "detail", "fix"):
        table.add_column(column)
    marks = {True: "[green]ok[/]", False: "[red]problem[/]", None: "[blue]info[/]"}
    problems = 0
    for results in get_plugin_manager().hook.voltana_doctor_checks(config=config, try_lock=try_lock):
        for check in results:
            problems += check.ok is False
            table.add_row(check.section, check.name, marks[check.ok], escape(check.detail), escape(check.fix))
    section, name, ok, detail, fix = config_row
    problems += ok is False
    table.add_row(section, name, marks[ok], escape(detail), escape(fix))
    console.print(table)
    if problems:
        err_console.print(f"voltana doctor: {problems} problem(s); see the fix column", highlight=False)
        raise typer.Exit(1)


def build_app() -> typer.Typer:
    """The app with every plugin's commands added (plugins loaded once per process)."""
    from voltana.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if not getattr(app, "_voltana_plugins_added", False):
        pm.hook.voltana_register_commands(cli=app)
        app._voltana_plugins_added = True  # type: ignore[attr-defined]
    return app


def main() -> None:
    """Console-script entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        build_app()()
    except VoltanaError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    # ``python -m voltana.cli`` runs this file as ``__main__``, a second copy of the module: plugin commands
    # import ``voltana.cli``, whose CliState is another class, so the root's ``--config`` would be invisible
    # to them. Run the canonical module's app instead.
    from voltana.cli import main as _canonical_main

    _canonical_main()
