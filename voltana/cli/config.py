"""``voltana config show``: the effective configuration and where each value came from."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from voltana.cli.state import cli_state, validate_policy_names
from voltana.core.config import LoadedConfig, effective_items
from voltana.core.hookspecs import hookimpl

console = Console()

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the effective configuration and where each value came from."""
    loaded = cli_state(ctx).loaded()
    validate_policy_names(loaded)
    _validate_policy_options(loaded)  # simulate, the router and the engines refuse a bad knob
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


def _validate_policy_options(loaded: LoadedConfig) -> None:
    """Raise ConfigError (one line) for a bad knob in ``policy.options`` of the configured policies, as the
    engines, the router and ``simulate`` would at start: the routing knobs always (every route reads them),
    the clock policy's (:func:`~voltana.plugins.ecofreq.factory.check_clock_options`, which the controllers
    run). The policies' modules load here, when the command runs (``voltana --help`` stays light)."""
    from voltana.plugins.ecofreq.factory import check_clock_options
    from voltana.plugins.routing_options import route_options

    route_options(loaded.config.policy)
    check_clock_options(loaded.config.policy)


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.add_typer(config_app, name="config")
