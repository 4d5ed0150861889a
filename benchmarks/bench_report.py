"""Shared output of the benchmarks: the rich table on the terminal and, with ``--json PATH``, the same table
as JSON with the machine it ran on (the docs' benchmark page is generated from those files).

JSON layout: ``{"benchmark": name, "machine": {...}, "tables": [{"title", "columns", "rows", "caption"}]}``;
cells are the strings the terminal shows.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from voltana import __version__
from voltana.core.errors import VoltanaError
from voltana.core.files import output_file, plot_file, same_file
from voltana.sim.report import json_text


def progress_bar(console: Console | None = None) -> Progress:
    """The benchmarks' transient progress bar on ``console`` (default: stdout); off where the console is not
    an interactive terminal (a pipe, a log, CI), where it draws nothing and rich would end it with a blank
    line."""
    console = console if console is not None else Console()
    return Progress(console=console, transient=True, disable=not console.is_interactive)


def script_name() -> str:
    """The running benchmark's file name (``bench_x.py``), argparse's ``prog``: what its errors start with."""
    return Path(sys.argv[0]).name


class _OneLineErrors(argparse.ArgumentParser):
    """argparse with a refused argument as one line (``prog: error: ...``, exit status 2) rather than the
    usage block followed by that line; ``--help`` shows the usage as always."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser: its module docstring's first paragraph as the ``--help`` description (whole
    sentences, not a first line cut mid-sentence) and every refused argument as one line."""
    first = (doc or "").strip().split("\n\n", 1)[0]
    return _OneLineErrors(description=" ".join(first.split()) or None)


def positive_number(text: str, unit: str) -> float:
    """``text`` as a positive finite number of ``unit``; raises ``argparse.ArgumentTypeError`` (one line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a number of {unit}") from None
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text.strip()!r}: give a positive number of {unit}")
    return value


def seconds(text: str) -> float:
    """A duration (``--duration``, ``--window``; s) as an argparse type: :func:`positive_number`."""
    return positive_number(text, "seconds")


def request_rate(text: str) -> float:
    """A request rate (``--rate``; req/s) as an argparse type: :func:`positive_number`."""
    return positive_number(text, "req/s")


MOST_INSTANCES = 64
"""Engine instances one option starts (``bench_router.py --prefill``, ``--decode``): a server on a port
each."""
MOST_CONCURRENCY = 4096
"""Requests in flight at once (``--concurrency``): an open connection each (two file descriptors on
loopback)."""
MOST_REQUESTS = 1_000_000
"""Requests of one load run (``--requests``, ``--latency-samples``), the simulator's bound per run too."""
MOST_BATCH = 1024
"""Requests in one batch (``--batches``, ``bench_vllm_overhead.py --requests``)."""
MOST_PROCESSES = 64
"""Helper processes a benchmark starts (``--cpu-hogs``)."""


def whole_number(text: str, least: int, most: int | None = None) -> int:
    """``text`` as a whole number of at least ``least`` and, if given, at most ``most``; raises
    ``argparse.ArgumentTypeError`` (one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a whole number") from None
    if most is not None and not least <= value <= most:
        raise argparse.ArgumentTypeError(f"{text.strip()!r}: give a whole number from {least} to {most}")
    if value < least:
        raise argparse.ArgumentTypeError(f"{text.strip()!r}: give a whole number >= {least}")
    return value


def count(text: str, most: int | None = None) -> int:
    """A count (``--rounds``, ``--iterations``, ...) as an argparse type: a whole number >= 1
    (:func:`whole_number`; 0 or fewer would leave nothing to measure, or hang) and at most ``most``. A count
    that only sets how long a benchmark runs has no upper bound; one that sizes something real has: see
    the typed counts below."""
    return whole_number(text, 1, most)


def counts(text: str, most: int | None = None) -> list[int]:
    """A comma-separated list of counts: each one a :func:`count` of at most ``most``."""
    return [count(item, most) for item in text.split(",")]


def instance_count(text: str) -> int:
    """Engine instances (``--prefill``, ``--decode``): a count of at most :data:`MOST_INSTANCES`."""
    return count(text, MOST_INSTANCES)


def concurrency(text: str) -> int:
    """Requests in flight at once (``--concurrency``): a count of at most :data:`MOST_CONCURRENCY`."""
    return count(text, MOST_CONCURRENCY)


def request_count(text: str) -> int:
    """Requests of a run (``--requests``, ``--latency-samples``): a count of at most :data:`MOST_REQUESTS`."""
    return count(text, MOST_REQUESTS)


def batch_size(text: str) -> int:
    """Requests in one batch (``bench_vllm_overhead.py --requests``): a count, at most :data:`MOST_BATCH`."""
    return count(text, MOST_BATCH)


def batch_sizes(text: str) -> list[int]:
    """Comma-separated batch sizes (``--batches``): each one a :func:`batch_size`."""
    return counts(text, MOST_BATCH)


def process_count(text: str) -> int:
    """Helper processes (``--cpu-hogs``): a whole number from 0 to :data:`MOST_PROCESSES`."""
    return whole_number(text, 0, MOST_PROCESSES)


def random_seed(text: str) -> int:
    """A random seed (``--seed``) as an argparse type: a whole number >= 0, as numpy's generators take."""
    return whole_number(text, 0)


def worker_count(text: str) -> int:
    """``--jobs`` as an argparse type: a whole number from 1 to 4x the machine's cores (more workers than that
    only add memory and switching; the results do not depend on it)."""
    return whole_number(text, 1, (os.cpu_count() or 1) * 4)


def ignore_interrupts() -> None:
    """A worker process's initializer: Ctrl-C goes to the main process alone, which stops the workers with
    :func:`stop_workers` and says so in one line (a worker's own KeyboardInterrupt prints a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """After Ctrl-C: cancel what has not started and end the running workers now, not after their point."""
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in multiprocessing.active_children():
        worker.terminate()


def list_items(text: str, option: str, form: str) -> list[str]:
    """A comma-separated option's items (``--points``, ``--panels``, ``--margins``, ``--policies``), the
    spaces around each one dropped; raises ``ValueError`` (one line) for an empty list or an empty item
    (``a,,b``, ``a,``), which would otherwise be dropped or read as the defaults without a word. ``form``:
    what the option takes, for the message (e.g. ``model/workload@rate,...``)."""
    if not text.strip():
        raise ValueError(f"{option} is empty; give {form} or omit it for the defaults")
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"{option}: an empty item in {text!r}; give {form}")
    return items


def require_library(parser: argparse.ArgumentParser, module: str, install: str) -> None:
    """``parser.error`` (one line, exit status 2) when ``module``, a library the benchmark needs that the
    base environment leaves out (``sglang``, ``ray``), is not installed in the running Python: its name and
    ``install`` (how to get it), before any work, rather than a ``ModuleNotFoundError`` traceback."""
    if importlib.util.find_spec(module) is None:
        parser.error(f"{module} is not installed in this Python ({sys.executable}): {install}")


def route_name(text: str) -> str:
    """A routing policy's name (``--prefill-route``) as an argparse type: looked up among the registered ones
    (:func:`voltana.core.policies.route_policy`; spaces around it dropped), so a name no plugin registers is
    refused in one line before a long run rather than with a traceback once the run reaches it."""
    from voltana.core.policies import route_policy  # here: keeps the config model out of every start-up
    from voltana.plugins import get_plugin_manager

    name = text.strip()
    try:
        route_policy(get_plugin_manager().hook, name)
    except VoltanaError as exc:  # UnknownPolicyError: lists the registered routes
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _argument_path(check: Callable[[str], Path], text: str) -> Path:
    """``check(text)``, its one-line error (:class:`OutputPathError`, or a missing extra) turned into
    ``argparse.ArgumentTypeError`` (so the path is refused while the arguments are read, before a long
    run)."""
    try:
        return check(text)
    except VoltanaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def output_file_path(text: str) -> Path:
    """An output file's path (``--json``) as an argparse type: :func:`voltana.core.files.output_file`."""
    return _argument_path(output_file, text)


def plot_file_path(text: str) -> Path:
    """``--plot``'s path as an argparse type: :func:`voltana.core.files.plot_file` (a writable file matplotlib
    can write; ``.png`` added without an extension; matplotlib missing is one line too)."""
    command = f"{script_name()} --plot"
    return _argument_path(lambda path: plot_file(path, command), text)


def check_distinct_outputs(
    parser: argparse.ArgumentParser, json_path: Path | None, plot_path: Path | None
) -> None:
    """``parser.error`` (one line) when ``--json`` and ``--plot`` name the same file: the plot, written
    last, would replace the results."""
    if json_path is None or plot_path is None:
        return
    if same_file(json_path, plot_path):
        parser.error(f"--plot {str(plot_path)!r} is the file --json writes: give each its own file")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: also write the tables and the machine as JSON."""
    parser.add_argument(
        "--json", type=output_file_path, default=None, help="also write the tables as JSON (docs)"
    )


def json_path_only(doc: str | None) -> Path | None:
    """For a benchmark without other options: parse ``--json`` alone (``doc``: the module docstring)."""
    parser = argument_parser(doc)
    add_json_option(parser)
    path: Path | None = parser.parse_args().json
    return path


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, load, Python, voltana version and commit, date (UTC)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "system": platform.system(),
        "voltana": __version__,
        "commit": commit or None,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
    }


def table_json(table: Table) -> dict[str, Any]:
    """A rich table as title, column headers, rows of cell strings and caption."""
    columns = [str(column.header) for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else []
    return {
        "title": str(table.title or ""),
        "columns": columns,
        "rows": rows,
        "caption": str(table.caption or ""),
    }


def emit(
    tables: Table | Sequence[Table],
    *,
    benchmark: str,
    json_path: Path | None,
    width: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Print the tables; with ``json_path``, also write them with :func:`machine` as JSON (and ``details``,
    the raw numbers behind the tables, under that key when given)."""
    tables = [tables] if isinstance(tables, Table) else list(tables)
    console = Console(width=width) if width else Console()
    for table in tables:
        console.print(table)
    if json_path is not None:
        payload = {"benchmark": benchmark, "machine": machine(), "tables": [table_json(t) for t in tables]}
        if details is not None:
            payload["details"] = details
        write_output(json_path, json_text(payload) + "\n")
        console.print(f"wrote {json_path}", markup=False)


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at the end of a run (``--json``); a failure is one line naming the script
    (``NAME.py: error: cannot write ...``, exit status 1) rather than a traceback after the results."""
    try:
        path.write_text(text)
    except OSError as exc:  # the results are printed above: say what failed in one line
        raise _cannot_write(path, exc) from None


def write_plot(draw: Callable[[Path], object], path: Path) -> None:
    """``draw(path)``: the ``--plot`` figure, drawn once the results are printed (and ``--json`` written); a
    file that cannot be written (its directory removed during the run, a full disk) is one line as for
    :func:`write_output`, exit status 1, rather than a traceback."""
    try:
        draw(path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> SystemExit:
    """``NAME.py: error: cannot write PATH: reason`` as the exit (status 1) of a run whose output failed."""
    return SystemExit(f"{script_name()}: error: cannot write {path}: {exc.strerror or exc}")
