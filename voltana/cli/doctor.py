"""``voltana doctor``: engines, GPU libraries, devices and clock-locking privileges, with fixes.

The checks themselves come from plugins (``voltana_doctor_checks``: ``voltana.plugins.doctor``,
``voltana.plugins.hardware``, telemetry, third parties); this module runs them and prints one table.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from voltana.cli.state import cli_state
from voltana.core.config import ConfigError
from voltana.core.hookspecs import hookimpl
from voltana.plugins import get_plugin_manager

console = Console()
err_console = Console(stderr=True)


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


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("doctor")(doctor)
