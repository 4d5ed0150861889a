"""``voltana profile``: write an EcoPred predictor profile (JSON).

Three sources: live engines (``--engine URL``: pins every clock of the grid through the engine's
``POST /voltana/clock`` and fits the iterations it reports), live engines under normal traffic
(``--engine URL --passive``), or the simulated GPU (``--simulated GPU MODEL``, the default when no engine is
named). The engine profiler lives in :mod:`voltana.profiler` and is imported when the command runs, so
``voltana --help`` stays fast.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from voltana.cli.state import cli_state
from voltana.core.extras import require_extra
from voltana.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from voltana.core.profile import Profile

DEFAULT_OUTPUT = Path("voltana-profile.json")
DEFAULT_GPU, DEFAULT_MODEL = "a100-80gb", "llama-3.1-8b"
"""What ``voltana profile`` simulates without ``--simulated``/``--gpu``/``--model``."""
PLAIN_PROGRESS_EVERY_S = 60.0
"""Longest gap between plain progress lines when stderr is not a terminal."""
T = TypeVar("T")


def profile_command(
    ctx: typer.Context,
    engine: Annotated[
        list[str] | None,
        typer.Option("--engine", help="Engine URL with voltana enabled (repeat for several instances)."),
    ] = None,
    phase: Annotated[
        str, typer.Option("--phase", help="prefill, decode, or auto (each engine's role; mixed: both).")
    ] = "auto",
    simulated: Annotated[
        tuple[str, str] | None,
        typer.Option("--simulated", metavar="GPU MODEL", help="Profile the simulated GPU and model instead."),
    ] = None,
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="Simulated GPU type (default a100-80gb; or --simulated).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Simulated model shape (default llama-3.1-8b).")
    ] = None,
    tp: Annotated[int | None, typer.Option("--tp", help="Simulated tensor-parallel degree.")] = None,
    clocks: Annotated[
        str | None,
        typer.Option("--clocks", help="Comma-separated clocks, MHz (default: the engines' allowed clocks)."),
    ] = None,
    output_text: Annotated[str, typer.Option("--output", "-o", help="Profile file to write.")] = str(
        DEFAULT_OUTPUT
    ),
    budget_minutes: Annotated[
        float | None,
        typer.Option("--budget-minutes", min=0.1, help="Bound the run; a coarser grid if short."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore a checkpoint of an earlier run.")
    ] = False,
    plot_text: Annotated[
        str | None,
        typer.Option(
            "--plot", help="Also write latency/energy vs clock (PNG, or the format its extension names)."
        ),
    ] = None,
    load_url: Annotated[
        str | None,
        typer.Option("--load-url", help="Send the load here (e.g. the router) instead of the engine."),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", min=1, help="Largest decode batch sent.")
    ] = None,
    max_prompt_tokens: Annotated[
        int | None, typer.Option("--max-prompt-tokens", min=4, help="Longest prompt sent (tokens).")
    ] = None,
    lease_s: Annotated[
        float, typer.Option("--lease-s", min=1.0, max=300.0, help="Clock lease; renewed while profiling.")
    ] = 10.0,
    passive: Annotated[
        bool,
        typer.Option("--passive", help="Fit from normal traffic, with short probes of unvisited clocks."),
    ] = False,
    duration_minutes: Annotated[
        float, typer.Option("--duration-minutes", min=0.05, help="--passive: how long to observe.")
    ] = 10.0,
    explore_seconds: Annotated[
        float, typer.Option("--explore-seconds", min=0.0, help="--passive: total time of pinned probes.")
    ] = 60.0,
) -> None:
    """Fit EcoPred's latency and energy models per clock on live engines (or the simulated GPU); write the
    profile that engine.predictor_profile loads."""
    err = Console(stderr=True)
    output, plot = _check_paths(err, output_text, plot_text)
    if engine:
        if simulated or gpu is not None or model is not None or tp is not None:
            _fail(err, "--engine profiles the engines' GPU: drop --simulated/--gpu/--model/--tp")
        require_extra("voltana profile --engine", modules=("aiohttp",))  # the HTTP client: router extra
        token_secret = cli_state(ctx).loaded().config.engine.clock_token
        token = token_secret.get_secret_value() if token_secret else None
        if passive:
            _profile_passive(err, engine, phase, output, token, duration_minutes, explore_seconds, plot, ctx)
        else:
            _profile_engines(
                err, engine, phase, clocks, output, token, budget_minutes, restart, plot, load_url,
                max_batch, max_prompt_tokens, lease_s,
            )  # fmt: skip
        return
    if passive:
        _fail(err, "--passive needs --engine URL")
    if simulated:
        if gpu is not None or model is not None:
            _fail(err, "give --simulated GPU MODEL or --gpu/--model, not both")
        gpu, model = simulated
    gpu = DEFAULT_GPU if gpu is None else gpu  # (an empty name is the user's: refused as unknown)
    model = DEFAULT_MODEL if model is None else model
    _profile_simulated(err, gpu, model, tp, clocks, output, plot)


def _fail(err: Console, message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(2)


def _check_paths(err: Console, output: str, plot: str | None) -> tuple[Path, Path | None]:
    """Before any work: ``-o`` and ``--plot`` as the files they will write
    (:func:`voltana.core.files.output_file`, :func:`~voltana.core.files.plot_file`); a mistake is one line,
    never a traceback after the run, never a file beside a directory."""
    from voltana.core.files import OutputPathError, output_file, plot_file, same_file

    flag = "-o"
    try:
        output_path = output_file(output)
        flag = "--plot"
        plot_path = plot_file(plot, "voltana profile --plot") if plot is not None else None
    except OutputPathError as exc:
        _fail(err, f"{flag} {exc}")
    if plot_path is not None and same_file(plot_path, output_path):
        _fail(err, f"--plot {str(plot_path)!r} is the file -o writes: give the plot a file of its own")
    return output_path, plot_path


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stop, docker stop, ``timeout``) during a run: handled like Ctrl-C."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises :class:`Terminated` in the main thread, so the run unpins at once and
    writes what it has instead of dying with the clock pinned until the lease lapses."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _RichProgress:
    """The profiler's progress callbacks on a rich progress bar with ETA (stderr); when stderr is not a
    terminal (a log, ``systemd``, CI) the bar draws nothing, so one plain line is printed at each tenth of the
    work (and at least every :data:`PLAIN_PROGRESS_EVERY_S`)."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self._progress = progress
        self._console = console
        self._task: Any = None
        self._plain = not console.is_terminal
        self._total = self._done = 0
        self._description = ""
        self._started = self._printed_at = 0.0
        self._printed_tenth = 0

    def start(self, total: int, description: str) -> None:
        self._task = self._progress.add_task(description, total=total)
        self._total, self._done, self._description = total, 0, description
        self._started = self._printed_at = time.monotonic()
        self._printed_tenth = 0

    def advance(self, count: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)
        self._done += count
        if not self._plain or self._total <= 0:
            return
        now = time.monotonic()
        tenth = 10 * self._done // self._total
        if tenth > self._printed_tenth or now - self._printed_at >= PLAIN_PROGRESS_EVERY_S:
            self._printed_tenth, self._printed_at = tenth, now
            elapsed = now - self._started
            eta = elapsed / self._done * (self._total - self._done)
            self.note(
                f"{self._description}: {self._done}/{self._total} ({100 * self._done // self._total}%), "
                f"elapsed {_clock(elapsed)}, ETA {_clock(eta)}"
            )

    def note(self, text: str) -> None:
        self._console.print(text, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _progress_bar(err: Console) -> Progress:
    """The profiler's bar on ``err``; off when ``err`` is not an interactive terminal, where it draws nothing
    and rich would end it with a blank line (:class:`_RichProgress` prints plain lines there instead)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=err, transient=True, disable=not err.is_interactive)


def _with_progress(err: Console, work: Callable[[_RichProgress], T], interrupted: str | None) -> T:
    """``work(progress)`` under a progress bar; Ctrl-C exits 130 (SIGTERM 143) with ``interrupted`` (None:
    the work said it), a user-fixable problem (engine refused, unreachable, nothing to fit) is one line and
    exit 2."""
    from voltana.profiler.errors import ProfilerError
    from voltana.profiler.fit import FitError

    try:
        with _sigterm_as_interrupt(), _progress_bar(err) as bar:
            return work(_RichProgress(bar, err))
    except KeyboardInterrupt as exc:
        if interrupted:
            err.print(interrupted, highlight=False)
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    except (ProfilerError, FitError, OSError) as exc:
        _fail(err, str(exc))


def _profile_engines(
    err: Console,
    engines: list[str],
    phase: str,
    clocks: str | None,
    output: Path,
    token: str | None,
    budget_minutes: float | None,
    restart: bool,
    plot: Path | None,
    load_url: str | None,
    max_batch: int | None,
    max_prompt_tokens: int | None,
    lease_s: float,
) -> None:
    from voltana.profiler.run import ProfileRequest, run_profile

    if phase not in ("prefill", "decode", "auto"):
        _fail(err, f"--phase must be prefill, decode or auto, got {phase!r}")
    try:
        wanted = _parse_int_list(clocks) if clocks is not None else ()
    except ValueError as exc:
        _fail(err, str(exc))
    request = ProfileRequest(
        engines=tuple(engines),
        output=output,
        phase=phase,
        clocks_mhz=wanted,
        token=token,
        load_url=load_url,
        budget_minutes=budget_minutes,
        max_batch=max_batch,
        max_prompt_tokens=max_prompt_tokens,
        lease_s=lease_s,
        restart=restart,
    )
    outcome = _with_progress(
        err,
        lambda progress: run_profile(request, progress),
        None,  # run_profile says what it unpinned and wrote
    )
    console = Console()
    _quality_table(console, outcome.quality)
    if outcome.mismatched:
        console.print(
            f"{outcome.mismatched} pinned iteration(s) ran at another clock (read back) and were skipped"
        )
    _written(console, outcome.path, plot)


def _quality_table(console: Console, quality: Any) -> None:
    table = Table(title="held-out fit error (MAPE) per clock")
    for column in ("phase", "clock (MHz)", "samples", "latency MAPE", "energy MAPE"):
        table.add_column(column)
    for phase, rows in quality.items():
        for q in rows:
            lat = "-" if q.latency_mape is None else f"{100 * q.latency_mape:.2f}%"
            energy = "-" if q.energy_mape is None else f"{100 * q.energy_mape:.2f}%"
            table.add_row(phase.value, str(q.clock_mhz), str(q.samples), lat, energy)
    console.print(table)


def _written(console: Console, path: Path | None, plot: Path | None) -> None:
    if path is None:
        return
    console.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)
    failure = None
    if plot is not None:
        from voltana.core.profile import load_profile

        failure = _write_plot(console, load_profile(path), plot)
    console.print(
        f'next step: set engine.predictor_profile = "{path.resolve()}" in the engines\' voltana config '
        f"(or VOLTANA_ENGINE__PREDICTOR_PROFILE={path.resolve()}) and restart them",
        highlight=False,
        soft_wrap=True,
    )
    if failure is not None:  # after the profile and the next step: a lost plot loses neither
        _fail(Console(stderr=True), failure)


def _write_plot(console: Console, profile: Profile, plot: Path) -> str | None:
    """Draw ``profile`` to ``plot`` and say so; the one line to fail with when it cannot be written
    (:func:`voltana.core.files.cannot_write_plot`), else None."""
    from voltana.core.files import cannot_write_plot
    from voltana.profiler.plot import plot_profile

    try:
        console.print(f"wrote {plot_profile(profile, plot)}", highlight=False, markup=False, soft_wrap=True)
    except OSError as exc:
        return cannot_write_plot(plot, exc)
    return None


def _profile_passive(
    err: Console,
    engines: list[str],
    phase: str,
    output: Path,
    token: str | None,
    duration_minutes: float,
    explore_seconds: float,
    plot: Path | None,
    ctx: typer.Context,
) -> None:
    from voltana.profiler.passive import PassiveRequest, run_passive

    config = cli_state(ctx).loaded().config
    request = PassiveRequest(
        engines=tuple(engines),
        output=output,
        phase=phase,
        token=token,
        duration_s=duration_minutes * 60.0,
        explore_s=explore_seconds,
        ttft_s=config.slo.ttft_s,
        itl_s=config.slo.itl_s,
    )
    outcome = _with_progress(
        err, lambda progress: run_passive(request, progress), "interrupted: clocks unpinned; nothing written"
    )
    console = Console()
    _quality_table(console, outcome.quality)
    console.print(
        f"clocks visited by the policy: {outcome.visited}; probed: {outcome.probed}", highlight=False
    )
    _written(console, outcome.path, plot)


def _profile_simulated(
    err: Console, gpu: str, model: str, tp: int | None, clocks: str | None, output: Path, plot: Path | None
) -> None:
    from voltana.core.profile import save_profile
    from voltana.hardware.errors import UnknownProfileError
    from voltana.hardware.simulated import performance_model
    from voltana.plugins.ecofreq.factory import default_profile_clocks, grid_size, profile_from_model

    try:
        perf = performance_model(gpu, model, tp)
        chosen = (
            _parse_clocks(clocks, perf.supported_clocks_mhz)
            if clocks is not None
            else default_profile_clocks(perf)
        )
    except (UnknownProfileError, ValueError) as exc:
        _fail(err, str(exc))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        # off where it draws nothing (not an interactive terminal): rich would end it with a blank line
        with Progress(*columns, console=err, transient=True, disable=not err.is_interactive) as progress:
            task = progress.add_task(f"profiling {perf.name} at {len(chosen)} clocks", total=grid_size(perf))
            profile: Profile = profile_from_model(perf, chosen, on_point=lambda: progress.advance(task))
    except KeyboardInterrupt:
        err.print("interrupted: nothing written", highlight=False)
        raise typer.Exit(130) from None
    try:
        path = save_profile(profile, output)
    except OSError as exc:
        _fail(err, f"cannot write {output}: {exc.strerror}")
    Console().print(
        f"wrote {path} ({perf.name}, clocks {chosen[0]}..{chosen[-1]} MHz, {len(chosen)} levels)",
        markup=False,
        soft_wrap=True,  # a path is not broken across lines (copying it, or a long temporary directory)
    )
    if plot is not None:
        failure = _write_plot(Console(), profile, plot)
        if failure is not None:  # the profile is saved already
            _fail(err, failure)


def _parse_int_list(raw: str) -> tuple[int, ...]:
    """``--clocks``: comma-separated MHz; an empty list is a mistake (omit the flag for the default)."""
    try:
        values = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"--clocks must be comma-separated integers (MHz), got {raw!r}") from None
    if not values:
        raise ValueError("--clocks is empty; give comma-separated MHz, or omit it for the default grid")
    return values


def _parse_clocks(raw: str, supported: tuple[int, ...]) -> tuple[int, ...]:
    values = _parse_int_list(raw)
    bad = [c for c in values if c not in supported]
    if not values or bad:
        raise ValueError(
            f"--clocks {bad or raw!r} not supported; supported: {supported[0]}..{supported[-1]} MHz"
        )
    return values


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("profile")(profile_command)
