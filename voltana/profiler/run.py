"""``voltana profile --engine``: pin every clock of the grid on live engines, send shaped load, collect the
per-iteration records, fit EcoPred's latency and energy models per clock, write the versioned profile.

The run is checkpointed after every (engine, phase, clock) unit to ``<output>.partial`` (the grid, and the
records of finished units). Started again with the same output, it resumes: finished units are not run
again, so a run interrupted and resumed fits exactly what a run in one go fits (the same grid, the same
prompts). Ctrl-C (or any failure) unpins at once, keeps the checkpoint and writes a profile of the clocks
finished so far, if any.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from voltana.core.files import write_text_atomically
from voltana.core.profile import PhaseFit, save_profile
from voltana.core.types import Phase
from voltana.plugins.ecofreq.factory import PREFILL_SEGMENT_ENDS
from voltana.profiler.client import ClockLease, EngineClient, EngineInfo, ProfilerError
from voltana.profiler.fit import ClockQuality, FitError, build_profile, fit_records
from voltana.profiler.plan import (
    Shape,
    decode_segments,
    decode_shapes,
    prefill_shapes,
    spread_clocks,
)

CHECKPOINT_FORMAT = "voltana-profile-run"
CHECKPOINT_VERSION = 2  # 2: records the grid-defining options (resume refuses others)
SETTLE_S = 0.15
"""Pause between the last request of a unit and the last read of its records (the engine publishes its
records from a background thread every 50 ms)."""
UNIT_OVERHEAD_S = 2.0 * SETTLE_S + 0.2
"""Per unit besides its shapes: the pin and its read-back, the settle reads, the checkpoint write."""
RECORD_KEYS = ("phase", "batch_size", "new_tokens", "context_tokens", "clock_mhz", "pinned_mhz",
               "latency_s", "energy_j")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Unit:
    """One engine at one pinned clock, sending one phase's shapes."""

    engine: str
    phase: Phase
    clock_mhz: int

    @property
    def key(self) -> str:
        return f"{self.engine}|{self.phase.value}|{self.clock_mhz}"


@dataclass
class Grid:
    """What a run profiles: clocks, each phase's shapes and segments, the phases of each engine."""

    clocks_mhz: tuple[int, ...]
    shapes: dict[Phase, list[Shape]]
    segment_ends: dict[Phase, tuple[int, ...]]
    engine_phases: dict[str, list[Phase]]
    model_id: str = ""

    def units(self) -> list[Unit]:
        """Every unit; the clocks of a phase are split round-robin over the engines serving it."""
        units = []
        for phase in (Phase.PREFILL, Phase.DECODE):
            engines = [url for url, phases in self.engine_phases.items() if phase in phases]
            for i, clock in enumerate(self.clocks_mhz):
                if engines:
                    units.append(Unit(engines[i % len(engines)], phase, clock))
        return units

    def to_json(self) -> dict[str, Any]:
        return {
            "clocks_mhz": list(self.clocks_mhz),
            "shapes": {p.value: [s.to_json() for s in shapes] for p, shapes in self.shapes.items()},
            "segment_ends": {p.value: list(ends) for p, ends in self.segment_ends.items()},
            "engine_phases": {url: [p.value for p in phases] for url, phases in self.engine_phases.items()},
            "model_id": self.model_id,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Grid:
        return cls(
            tuple(int(c) for c in doc["clocks_mhz"]),
            {Phase(p): [Shape.from_json(s) for s in shapes] for p, shapes in doc["shapes"].items()},
            {Phase(p): tuple(int(e) for e in ends) for p, ends in doc["segment_ends"].items()},
            {url: [Phase(p) for p in phases] for url, phases in doc["engine_phases"].items()},
            str(doc.get("model_id", "")),
        )


@dataclass
class Checkpoint:
    """``<output>.partial``: the grid and the records of every finished unit."""

    path: Path
    grid: Grid
    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    """The grid-defining options of the run that made it (:func:`grid_options`)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at ``path``; None when absent; ProfilerError when unreadable."""
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a voltana profile checkpoint (not a JSON object)")
            if doc.get("format") != CHECKPOINT_FORMAT or doc.get("version") != CHECKPOINT_VERSION:
                raise ValueError("not a voltana profile checkpoint of this version")
            return cls(path, Grid.from_json(doc["grid"]), dict(doc["units"]), dict(doc["options"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProfilerError(f"cannot resume from {path}: {exc} (delete it or pass --restart)") from None

    def done(self, unit: Unit) -> bool:
        return unit.key in self.units

    def add(self, unit: Unit, records: list[dict[str, Any]], mismatched: int) -> None:
        """Record a finished unit and save the checkpoint atomically."""
        with self._lock:
            self.units[unit.key] = {"records": records, "mismatched": mismatched}
            doc = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "grid": self.grid.to_json(),
                "options": self.options,
                "units": self.units,
            }
            write_text_atomically(self.path, json.dumps(doc, separators=(",", ":")))

    def records(self, phase: Phase, clocks: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The records of finished units of ``phase`` (optionally only at ``clocks``), in unit order."""
        out: list[dict[str, Any]] = []
        for unit in self.grid.units():
            if (
                unit.phase is phase
                and unit.key in self.units
                and (clocks is None or unit.clock_mhz in clocks)
            ):
                out.extend(self.units[unit.key]["records"])
        return out

    def finished_clocks(self, phase: Phase) -> list[int]:
        """Clocks whose unit of ``phase`` is finished."""
        return [u.clock_mhz for u in self.grid.units() if u.phase is phase and u.key in self.units]


@dataclass(frozen=True)
class ProfileRequest:
    """What the user asked for (CLI flags)."""

    engines: tuple[str, ...]
    output: Path
    phase: str = "auto"  # prefill | decode | auto
    clocks_mhz: tuple[int, ...] = ()
    token: str | None = None
    load_url: str | None = None
    budget_minutes: float | None = None
    max_batch: int | None = None
    max_prompt_tokens: int | None = None
    lease_s: float = 10.0
    restart: bool = False


@dataclass
class ProfileOutcome:
    """What a run produced: the profile path (None if nothing could be fitted), quality, counts."""

    path: Path | None
    complete: bool
    quality: dict[Phase, list[ClockQuality]]
    units_run: int
    units_total: int
    mismatched: int
    clocks_mhz: tuple[int, ...]
    message: str = ""


class Progress(Protocol):
    """Callbacks for a progress display (``total`` shapes, ``advance`` one, ``note`` a line)."""

    def start(self, total: int, description: str) -> None: ...
    def advance(self, count: int = 1) -> None: ...
    def note(self, text: str) -> None: ...


# ------------------------------------------------------------------------------------ planning


def grid_options(request: ProfileRequest) -> dict[str, Any]:
    """The options that define a run's grid (a checkpoint resumes only under the same ones)."""
    return {
        "phase": request.phase,
        "clocks_mhz": sorted(set(request.clocks_mhz)),
        "max_batch": request.max_batch,
        "max_prompt_tokens": request.max_prompt_tokens,
        "budget_minutes": request.budget_minutes,
    }


_OPTION_FLAGS = {
    "phase": "--phase",
    "clocks_mhz": "--clocks",
    "max_batch": "--max-batch",
    "max_prompt_tokens": "--max-prompt-tokens",
    "budget_minutes": "--budget-minutes",
}


def _describe(options: Mapping[str, Any]) -> str:
    def show(key: str) -> str:
        value = options.get(key)
        if key == "clocks_mhz":
            return ",".join(map(str, value)) if value else "(default)"
        return "(default)" if value is None else str(value)

    return " ".join(f"{flag} {show(key)}" for key, flag in _OPTION_FLAGS.items())


def phases_of(info: EngineInfo, wanted: str) -> list[Phase]:
    """The phases to profile on an engine: ``--phase``, or (auto) its role (mixed: both)."""
    if wanted in ("prefill", "decode"):
        return [Phase(wanted)]
    if info.role in ("prefill", "decode"):
        return [Phase(info.role)]
    return [Phase.PREFILL, Phase.DECODE]


def choose_clocks(infos: Sequence[EngineInfo], requested: Sequence[int]) -> tuple[int, ...]:
    """``--clocks`` (checked against every engine's allowed clocks), else the clocks all engines allow."""
    common = set(infos[0].allowed_clocks_mhz)
    for info in infos[1:]:
        common &= set(info.allowed_clocks_mhz)
    if requested:
        bad = sorted(set(requested) - common)
        if bad:
            raise ProfilerError(f"--clocks {bad} not allowed by the engine(s); allowed: {sorted(common)}")
        return tuple(sorted(set(requested)))
    if not common:
        raise ProfilerError("the engines share no allowed clock (check their clocks config)")
    return tuple(sorted(common))


def plan_grid(
    infos: Sequence[EngineInfo], request: ProfileRequest, clocks: Sequence[int], coarse: bool
) -> Grid:
    """The grid (shapes per phase, segments, engine phases) for ``clocks``."""
    engine_phases = {info.url: phases_of(info, request.phase) for info in infos}
    wanted = {p for phases in engine_phases.values() for p in phases}
    shapes: dict[Phase, list[Shape]] = {}
    segments: dict[Phase, tuple[int, ...]] = {}
    max_len = min(info.max_model_len for info in infos)
    max_prompt = min(request.max_prompt_tokens or max_len, max_len) - 1
    if Phase.PREFILL in wanted:
        shapes[Phase.PREFILL] = prefill_shapes(max_prompt, coarse)
        segments[Phase.PREFILL] = PREFILL_SEGMENT_ENDS
    if Phase.DECODE in wanted:
        decoders = [i for i in infos if Phase.DECODE in engine_phases[i.url]]
        ends = decode_segments(decoders[0].capture_sizes)
        max_batch = request.max_batch or ends[-1]
        kv = min((i.kv_capacity_tokens for i in decoders if i.kv_capacity_tokens), default=0)
        shapes[Phase.DECODE] = decode_shapes(ends, max_prompt + 1, kv, max_batch, coarse)
        segments[Phase.DECODE] = ends
    for phase, found in shapes.items():
        if not found:
            raise ProfilerError(f"no {phase.value} load fits the engine (max_model_len {max_len})")
    return Grid(tuple(sorted(clocks)), shapes, segments, engine_phases, infos[0].model_id)


def estimate_s(grid: Grid, shape_s: Mapping[Phase, float]) -> float:
    """Seconds the grid takes: the busiest engine's units x (shapes x seconds per shape + overhead).

    ``shape_s`` is timed by the warm-up, unpinned, i.e. at the engine's own clock, taken as the grid's
    highest; at a lower clock a shape is taken to last ``highest / clock`` times as long (compute-bound
    latency scales with 1/clock; memory-bound decode slows less), so the estimate errs long and
    ``--budget-minutes`` holds (timed at the top clock only, 0.5 min of budget ran 42 s at 3 clocks)."""
    top = max(grid.clocks_mhz, default=1)
    per_engine: dict[str, float] = {}
    for unit in grid.units():
        slowdown = top / unit.clock_mhz
        cost = len(grid.shapes[unit.phase]) * shape_s.get(unit.phase, 0.0) * slowdown + UNIT_OVERHEAD_S
        per_engine[unit.engine] = per_engine.get(unit.engine, 0.0) + cost
    return max(per_engine.values(), default=0.0)


def fit_budget(
    infos: Sequence[EngineInfo],
    request: ProfileRequest,
    clocks: Sequence[int],
    shape_s: Mapping[Phase, float],
    budget_s: float,
) -> tuple[Grid, float]:
    """The finest grid that fits ``budget_s``: full shapes at every clock, else coarse shapes, then fewer
    clocks (always the lowest and the highest); the coarsest (2 clocks) when nothing fits."""
    grid = plan_grid(infos, request, clocks, coarse=False)
    if estimate_s(grid, shape_s) <= budget_s:
        return grid, estimate_s(grid, shape_s)
    for count in range(len(clocks), 1, -1):
        grid = plan_grid(infos, request, spread_clocks(clocks, count), coarse=True)
        if estimate_s(grid, shape_s) <= budget_s:
            break
    return grid, estimate_s(grid, shape_s)


# ------------------------------------------------------------------------------------ running


def _strip(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in RECORD_KEYS}


class UnitRunner:
    """Runs units on one engine: pin, send the shapes, collect the pinned records."""

    def __init__(
        self, client: EngineClient, lease: ClockLease, grid: Grid, stop: threading.Event, progress: Progress
    ) -> None:
        self.client = client
        self.lease = lease
        self.grid = grid
        self.stop = stop
        self.progress = progress

    def run(self, unit: Unit) -> tuple[list[dict[str, Any]], int] | None:
        """(records pinned at the unit's clock and read back at it, records whose clock differed), or None
        when stopped before the end."""
        self.lease.pin(unit.clock_mhz)
        since = self.client.last_seq()
        collected: list[dict[str, Any]] = []
        for index, shape in enumerate(self.grid.shapes[unit.phase]):
            if self.stop.is_set():
                return None
            self.lease.check()
            self.client.complete(
                shape.prompts(unit.clock_mhz * 1000 + index), shape.max_tokens, self.grid.model_id
            )
            records, since, _ = self.client.iterations(since)
            collected.extend(records)
            self.progress.advance()
        while True:  # the engine publishes from a background thread: read until nothing new comes
            time.sleep(SETTLE_S)
            records, since, _ = self.client.iterations(since)
            if not records:
                break
            collected.extend(records)
        if self.stop.is_set():
            # Stopped while this unit ran (Ctrl-C unpins every engine at once): its last shapes may have run
            # unpinned and been filtered out, so the unit is incomplete and runs again on resume. The stop
            # is set before the unpin, so a unit that passes this check collected every record pinned.
            return None
        pinned = [r for r in collected if r.get("pinned_mhz") == unit.clock_mhz]
        good = [_strip(r) for r in pinned if r.get("clock_mhz") == unit.clock_mhz]
        return good, len(pinned) - len(good)


def warm_up(client: EngineClient, grid: Grid, phases: Sequence[Phase]) -> dict[Phase, float]:
    """Send three shapes per phase (first, middle, last) unpinned: warms the engine, and times a shape."""
    seconds: dict[Phase, float] = {}
    for phase in phases:
        shapes = grid.shapes[phase]
        picks = sorted({0, len(shapes) // 2, len(shapes) - 1})
        t0 = time.monotonic()
        for i in picks:
            client.complete(shapes[i].prompts(i), shapes[i].max_tokens, grid.model_id)
        seconds[phase] = (time.monotonic() - t0) / len(picks)
    return seconds


def run_profile(
    request: ProfileRequest,
    progress: Progress,
    client_factory: Callable[[str], EngineClient] | None = None,
) -> ProfileOutcome:
    """The whole run (see the module docstring); raises ProfilerError / FitError with one line; on
    KeyboardInterrupt unpins, keeps the checkpoint, writes what it has and re-raises."""
    make = client_factory or (lambda url: EngineClient(url, request.token, request.load_url))
    clients = {url.rstrip("/"): make(url) for url in request.engines}
    checkpoint_path = request.output.with_name(request.output.name + ".partial")
    leases: dict[str, ClockLease] = {}
    checkpoint: Checkpoint | None = None
    try:
        infos = [client.info() for client in clients.values()]
        for client in clients.values():
            client.check_access()
        checkpoint = _open_checkpoint(request, checkpoint_path, infos, clients, progress)
        grid = checkpoint.grid
        todo = [u for u in grid.units() if not checkpoint.done(u)]
        progress.start(
            sum(len(grid.shapes[u.phase]) for u in todo), f"profiling {len(grid.clocks_mhz)} clocks"
        )
        leases = {url: ClockLease(client, request.lease_s) for url, client in clients.items()}
        mismatched = _run_units(todo, clients, leases, grid, checkpoint, threading.Event(), progress)
    except (KeyboardInterrupt, ProfilerError) as exc:
        for lease in leases.values():
            lease.release()
        written = ""
        if checkpoint is not None and checkpoint.units:
            try:
                outcome = finish(checkpoint, request, partial=True)
                if outcome.path:
                    written = (
                        f"; wrote a PARTIAL profile {outcome.path} (clocks {list(outcome.clocks_mhz)} of "
                        f"{list(checkpoint.grid.clocks_mhz)}), not for deployment: "
                        "engine.predictor_profile refuses it"
                    )
            except FitError as fit_exc:  # what was collected cannot be fitted yet: the checkpoint resumes
                written = f"; no partial profile ({fit_exc})"
        verb = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped"
        if checkpoint is not None:
            progress.note(f"{verb}: clocks unpinned{written}; run the same command again to finish it")
        elif isinstance(exc, KeyboardInterrupt):
            progress.note(f"{verb}: clocks unpinned; nothing written")
        raise
    finally:
        for lease in leases.values():
            lease.release()
        for client in clients.values():
            client.close()
    outcome = finish(checkpoint, request, partial=False)
    outcome.units_run, outcome.mismatched = len(todo), mismatched
    checkpoint_path.unlink(missing_ok=True)
    return outcome


def _open_checkpoint(
    request: ProfileRequest,
    path: Path,
    infos: Sequence[EngineInfo],
    clients: Mapping[str, EngineClient],
    progress: Progress,
) -> Checkpoint:
    """The checkpoint to resume, else a new grid (warm-up first; sized to ``--budget-minutes``)."""
    checkpoint = None if request.restart else Checkpoint.load(path)
    if checkpoint is not None:
        if set(checkpoint.grid.engine_phases) != set(clients):
            raise ProfilerError(
                f"{path} was made with engines {sorted(checkpoint.grid.engine_phases)}; "
                "pass the same --engine URLs to resume, or --restart"
            )
        wanted = grid_options(request)
        if checkpoint.options != wanted:
            changed = {k: v for k, v in checkpoint.options.items() if wanted.get(k) != v}
            raise ProfilerError(
                f"{path} was made with other options ({_describe(checkpoint.options)}); pass the same "
                f"{' '.join(_OPTION_FLAGS[k] for k in changed if k in _OPTION_FLAGS)} to resume it, "
                "or --restart to start over with these"
            )
        progress.note(f"resuming from {path}: {len(checkpoint.units)} unit(s) done")
        return checkpoint
    clocks = choose_clocks(infos, request.clocks_mhz)
    grid = plan_grid(infos, request, clocks, coarse=False)
    shape_s: dict[Phase, float] = {}
    warm_started = time.monotonic()
    for url, client in clients.items():
        for phase, secs in warm_up(client, grid, grid.engine_phases[url]).items():
            shape_s[phase] = max(shape_s.get(phase, 0.0), secs)
    if request.budget_minutes is not None:
        budget_s = request.budget_minutes * 60.0 - (time.monotonic() - warm_started)  # warm-up counts
        grid, estimate = fit_budget(infos, request, clocks, shape_s, max(budget_s, 0.0))
        shapes = sum(len(s) for s in grid.shapes.values())
        progress.note(
            f"budget {request.budget_minutes:g} min: {len(grid.clocks_mhz)} clocks, {shapes} shapes "
            f"per clock (estimate {estimate / 60:.1f} min)"
        )
    return Checkpoint(path, grid, options=grid_options(request))


def _run_units(
    todo: Sequence[Unit],
    clients: Mapping[str, EngineClient],
    leases: Mapping[str, ClockLease],
    grid: Grid,
    checkpoint: Checkpoint,
    stop: threading.Event,
    progress: Progress,
) -> int:
    """Run ``todo`` with one worker per engine; returns the records whose read-back clock differed."""
    mismatched = 0
    lock = threading.Lock()

    def work(url: str) -> None:
        nonlocal mismatched
        runner = UnitRunner(clients[url], leases[url], grid, stop, progress)
        try:
            for unit in (u for u in todo if u.engine == url):
                result = runner.run(unit)
                if result is None:
                    return
                checkpoint.add(unit, *result)
                with lock:
                    mismatched += result[1]
        except BaseException:
            stop.set()  # one engine failed: the others stop after their current batch
            raise
        finally:
            leases[url].release()

    engines = sorted({u.engine for u in todo})
    with ThreadPoolExecutor(max(1, len(engines)), thread_name_prefix="voltana-profile") as pool:
        futures: list[Future[None]] = [pool.submit(work, url) for url in engines]
        try:
            while not all(f.done() for f in futures):
                time.sleep(0.1)
        except KeyboardInterrupt:
            stop.set()
            for lease in leases.values():
                lease.release()
            raise
        for future in futures:
            future.result()  # a worker's ProfilerError surfaces here
    return mismatched


def finish(checkpoint: Checkpoint, request: ProfileRequest, partial: bool) -> ProfileOutcome:
    """Fit and write the profile from the checkpoint's finished units (all of them, or, when ``partial``,
    the clocks finished in every phase)."""
    grid = checkpoint.grid
    phases = sorted(grid.shapes, key=lambda p: p.value, reverse=True)  # prefill first
    clocks = grid.clocks_mhz
    if partial:
        finished = set(grid.clocks_mhz)
        for phase in phases:
            finished &= set(checkpoint.finished_clocks(phase))
        clocks = tuple(sorted(finished))
    units = grid.units()
    outcome = ProfileOutcome(None, not partial, {}, 0, len(units), 0, clocks)
    if not clocks:
        return outcome
    fits: dict[Phase, PhaseFit] = {}
    for phase in phases:
        fit, quality = fit_records(checkpoint.records(phase, clocks), phase, clocks, grid.segment_ends[phase])
        fits[phase] = fit
        outcome.quality[phase] = quality
    metadata = {
        "profiled": "engine",
        "model": grid.model_id,
        "engines": {url: [p.value for p in ps] for url, ps in grid.engine_phases.items()},
        "complete": not partial,
        "shapes": {p.value: len(s) for p, s in grid.shapes.items()},
        "fit_quality": {p.value: [q.to_json() for q in qs] for p, qs in outcome.quality.items()},
    }
    profile = build_profile(fits, clocks, f"voltana profile --engine ({grid.model_id})", metadata)
    outcome.path = save_profile(profile, request.output)
    return outcome


__all__ = ["FitError", "ProfileOutcome", "ProfileRequest", "ProfilerError", "run_profile"]
