"""``voltana clockd``: the privileged clock helper, the only process that locks GPU clocks."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from voltana.cli.state import cli_state
from voltana.core.hookspecs import hookimpl


def clockd_command(
    ctx: typer.Context,
    socket_path: Annotated[Path, typer.Option("--socket", help="Unix socket to listen on.")] = Path(
        "/run/voltana/clockd.sock"
    ),
    allow_uid: Annotated[
        list[int] | None, typer.Option("--allow-uid", help="User id allowed to connect (repeatable).")
    ] = None,
    allow_gid: Annotated[
        list[int] | None, typer.Option("--allow-gid", help="Group id allowed to connect (repeatable).")
    ] = None,
) -> None:
    """Run the privileged clock helper: the only process that locks GPU clocks; resets when a client leaves.

    Opens the GPUs of the config's hardware section; engines set hardware.clockd_socket to this socket.
    """
    from voltana.hardware.clockd import ClockDaemon, ClockdSocketError
    from voltana.hardware.device import clock_privilege
    from voltana.hardware.errors import VoltanaHardwareError
    from voltana.hardware.nvml import PRIVILEGE_FIX
    from voltana.hardware.select import open_devices
    from voltana.plugins import get_plugin_manager

    err = Console(stderr=True)
    hardware = cli_state(ctx).loaded().config.hardware.model_copy(update={"clockd_socket": None})
    try:
        # a clock daemon never serves the simulated GPU by accident: engines would "lock" nothing
        group = open_devices(hardware, get_plugin_manager().hook, fallback_to_simulated=False)
    except VoltanaHardwareError as exc:
        hint = (
            '; voltana clockd serves physical GPUs only (set hardware.vendor = "simulated" to serve a '
            "simulated GPU on purpose)"
            if hardware.vendor == "auto"
            else ""
        )
        err.print(f"[red]error:[/] {escape(str(exc))}{hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    allowed, why = clock_privilege()
    if not allowed and group.vendor != "simulated":
        err.print(f"[yellow]warning:[/] {why}: {escape(PRIVILEGE_FIX)}", highlight=False, soft_wrap=True)
    daemon = ClockDaemon(group, socket_path, allow_uid or (), allow_gid or ())

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=daemon.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        daemon.serve_forever(
            on_ready=lambda: err.print(
                f"voltana clockd: serving {len(group)} {group.vendor} GPU(s) on {socket_path} "
                f"(uids {sorted(daemon.allowed_uids)}, gids {sorted(daemon.allowed_gids)})",
                highlight=False,
                soft_wrap=True,
            )
        )
    except ClockdSocketError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]error:[/] cannot listen on {socket_path}: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        group.close()


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("clockd")(clockd_command)
