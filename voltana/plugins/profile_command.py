"""``voltana profile``: write a predictor profile (JSON) of a simulated GPU and model to seed EcoPred."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from voltana.core.hookspecs import hookimpl
from voltana.core.profile import save_profile


def profile_command(
    gpu: Annotated[str, typer.Option("--gpu", help="Simulated GPU type (e.g. a100-80gb).")] = "a100-80gb",
    model: Annotated[str, typer.Option("--model", help="Model shape (e.g. llama-3.1-8b).")] = "llama-3.1-8b",
    tp: Annotated[
        int | None, typer.Option("--tp", help="Tensor-parallel degree (model default if unset).")
    ] = None,
    clocks: Annotated[
        str | None, typer.Option("--clocks", help="Comma-separated clocks to fit, MHz (default: 12 levels).")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Profile file to write.")] = Path(
        "voltana-profile.json"
    ),
) -> None:
    """Profile a simulated GPU and model on a grid of batches and clocks; write the fits as a JSON profile."""
    from voltana.hardware.errors import UnknownProfileError
    from voltana.hardware.simulated import performance_model
    from voltana.plugins.ecofreq_seed import default_profile_clocks, grid_size, profile_from_model

    err = Console(stderr=True)
    try:
        perf = performance_model(gpu, model, tp)
        chosen = _parse_clocks(clocks, perf.supported_clocks_mhz) if clocks else default_profile_clocks(perf)
    except (UnknownProfileError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(f"profiling {perf.name} at {len(chosen)} clocks", total=grid_size(perf))
        profile = profile_from_model(perf, chosen, on_point=lambda: progress.advance(task))
    try:
        path = save_profile(profile, output)
    except OSError as exc:
        err.print(f"[red]error:[/] cannot write {output}: {exc.strerror}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(f"wrote {path} ({perf.name}, clocks {chosen[0]}..{chosen[-1]} MHz, {len(chosen)} levels)")


def _parse_clocks(raw: str, supported: tuple[int, ...]) -> tuple[int, ...]:
    try:
        values = sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--clocks must be comma-separated integers (MHz), got {raw!r}") from None
    bad = [c for c in values if c not in supported]
    if not values or bad:
        raise ValueError(
            f"--clocks {bad or raw!r} not supported; supported: {supported[0]}..{supported[-1]} MHz"
        )
    return tuple(values)


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("profile")(profile_command)
