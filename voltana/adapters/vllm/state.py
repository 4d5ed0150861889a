"""Instance state for the router, added to vLLM's own ``/metrics``.

vLLM's scheduler (where voltana decides) runs in the EngineCore process; ``/metrics`` is served by the API
server process. The EngineCore side writes a small JSON file per engine (an
:class:`~voltana.core.state_payload.InstanceStatePayload`, atomically, from a publisher thread, at most
every ``PUBLISH_INTERVAL_S`` and whenever the engine goes idle); the API server side registers a Prometheus
collector that reads those files at scrape time. The directory travels to child processes in
``_VOLTANA_VLLM_STATE_DIR``, set by the first process that loads the plugin (the API server, before it
spawns the engine).

``GET /voltana/state`` returns the same as JSON (:func:`state_payload`), the shape the router polls from
SGLang too. ``GET /voltana/requests/{X-Request-Id}`` returns one finished request's measured energy
(``{"request_id", "phase", "energy_j"}``, 404 when unknown): the EngineCore side buffers finished requests'
records and appends them to ``requests-<engine>.jsonl`` when it publishes its state
(:class:`RequestEnergyLog`); the API server finds them by the id the client sent, matched exactly against
the forms vLLM embeds it in (:func:`_vllm_id_pattern`), reading the files incrementally in a worker thread
(:class:`RequestEnergyIndex`, :func:`request_record`); a 404 says ``not_yet`` or ``not_measured``. The
router's ``report_energy`` reads it.

Metrics (one sample per engine, label ``engine`` = data-parallel rank, as vLLM's own):
``voltana:sm_clock_mhz``, ``voltana:monitor_only``, ``voltana:num_requests_running``,
``voltana:num_requests_waiting``, ``voltana:kv_tokens``, ``voltana:kv_capacity_tokens``,
``voltana:iterations_total``, ``voltana:hook_seconds_total``, ``voltana:energy_joules_total``,
``voltana:idle_energy_joules_total`` and ``voltana:instance_info`` (value 1, labels ``role``, ``policy``,
``instance_id``, ``capture_sizes`` = comma-separated CUDA-graph batch sizes, ``energy_source`` = ``measured``,
``power-integrated``, ``simulated`` or ``unknown``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from voltana.adapters.engine_control import FileControlBackend, configured_clock_token
from voltana.core.types import EnergySource, RequestRecord
from voltana.profiler.ceiling_api import add_ceiling_routes
from voltana.profiler.engine_api import add_control_routes
from voltana.router.request_ids import NOT_MEASURED, NOT_YET, RECORD_ROUTE, id_from_path

STATE_DIR_ENV = "_VOLTANA_VLLM_STATE_DIR"
STATE_MAX_AGE_S = 60.0
_GAUGES = (
    ("sm_clock_mhz", "SM clock voltana applied last (MHz)"),
    ("monitor_only", "1 when voltana only measures (clock control off)"),
    ("num_requests_running", "requests in the running batch"),
    ("num_requests_waiting", "requests waiting for their prefill"),
    ("kv_tokens", "tokens held in the KV cache by running requests"),
    ("kv_capacity_tokens", "KV cache capacity (tokens)"),
)
_COUNTERS = (
    ("iterations", "iterations voltana saw"),
    ("hook_seconds", "time spent in voltana's per-iteration hook (s)"),
    ("energy_joules", "GPU energy of the instance, iterations and idle (J; see energy_source)"),
    ("idle_energy_joules", "part of energy_joules spent between iterations (J)"),
)


def state_dir(create: bool = False) -> Path | None:
    """The shared state directory; with ``create`` make one (and export it to children) if unset."""
    current = os.environ.get(STATE_DIR_ENV)
    if current:
        return Path(current)
    if not create:
        return None
    path = tempfile.mkdtemp(prefix="voltana-vllm-")
    os.environ[STATE_DIR_ENV] = path
    atexit.register(shutil.rmtree, path, True)  # the creating process (the API server) outlives its engines
    return Path(path)


def engine_state_path(directory: Path | None, engine_index: int) -> Path | None:
    """This engine's state file in ``directory`` (None: publishing is off). The EngineCore side publishes
    :class:`~voltana.core.state_payload.InstanceStatePayload` there with the shared
    :class:`~voltana.adapters.state_payload.StatePublisher` (its own thread, off the engine thread)."""
    return directory / f"engine-{engine_index}.json" if directory else None


REQUESTS_FILE = "requests-{engine}.jsonl"
REQUEST_LINES_KEPT = 20_000
"""Lines per engine file before it is rotated (one older file is kept)."""
INDEX_MAX_RECORDS = 4 * REQUEST_LINES_KEPT


class RequestEnergyLog:
    """EngineCore side: finished requests' energy, buffered in memory (one tuple per request, added on the
    engine thread or the energy sampler thread) and appended to this engine's ``requests-<engine>.jsonl`` by
    :meth:`flush` (after each state write, on the state publisher's thread)."""

    def __init__(self, directory: Path | None, engine_index: int) -> None:
        self._path = directory / REQUESTS_FILE.format(engine=engine_index) if directory else None
        self._pending: deque[tuple[str, str, float]] = deque()  # append/popleft are thread-safe
        self._lines = 0

    def add(self, request_id: str, phase: str, energy_j: float) -> None:
        """Remember one finished request (known energy only)."""
        if self._path is not None:
            self._pending.append((request_id, phase, energy_j))

    def add_record(self, record: RequestRecord) -> None:
        """:meth:`add` for a finished-request record; skipped when its energy is unknown (never a guess)."""
        if record.energy_source != EnergySource.UNKNOWN:
            self.add(record.request_id, record.phase.value, record.energy_j)

    def flush(self) -> None:
        """Append what is buffered (never raises: records are best effort)."""
        if self._path is None or not self._pending:
            return
        taken: list[tuple[str, str, float]] = []
        with contextlib.suppress(IndexError):
            while True:
                taken.append(self._pending.popleft())
        lines = "".join(json.dumps({"request_id": r, "phase": p, "energy_j": j}) + "\n" for r, p, j in taken)
        try:
            if self._lines >= REQUEST_LINES_KEPT:
                self._path.replace(self._path.with_suffix(".jsonl.1"))
                self._lines = 0
            with self._path.open("a", encoding="utf-8") as fh:
                fh.write(lines)
            self._lines += lines.count("\n")
        except OSError:
            return


def _vllm_id_pattern(client_id: str) -> re.Pattern[str]:
    """vLLM 0.32's engine request ids for the client's ``X-Request-Id`` ``X``: ``cmpl-X-<prompt index>``
    (``vllm/entrypoints/openai/completion/serving.py``), ``chatcmpl-X`` or ``chatcmpl-X_<index>``
    (``.../chat_completion/serving.py``), each followed by ``-<8 hex>`` unless
    ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION`` (``vllm/v1/engine/input_processor.py``); or ``X`` itself."""
    x = re.escape(client_id)
    return re.compile(rf"(?:cmpl-{x}-\d+|chatcmpl-{x}(?:_\d+)?)(?:-[0-9a-f]{{8}})?|{x}")


def _matches(engine_id: str, client_id: str) -> bool:
    """Whether vLLM's request id ``engine_id`` is exactly one of ``client_id``'s (never a longer id's)."""
    return _vllm_id_pattern(client_id).fullmatch(engine_id) is not None


class RequestEnergyIndex:
    """API-server side: the engines' request records, read incrementally (only bytes appended since the
    last lookup; a rotated file is read once more) and kept by engine request id, at most
    :data:`INDEX_MAX_RECORDS`. Thread-safe: lookups run in a worker thread, off vLLM's event loop."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._read: dict[Path, tuple[int, int]] = {}  # file -> (inode, bytes read)
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _refresh(self) -> None:
        for path in sorted(self._directory.glob("requests-*.jsonl*")):
            try:
                with path.open("rb") as fh:
                    inode = os.fstat(fh.fileno()).st_ino
                    known_inode, offset = self._read.get(path, (inode, 0))
                    if known_inode != inode:
                        offset = 0
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            complete = data.rfind(b"\n") + 1  # a line being appended is read next time
            self._read[path] = (inode, offset + complete)
            for line in data[:complete].splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("request_id"), str):
                    self._records[record["request_id"]] = record
                    self._records.move_to_end(record["request_id"])
        while len(self._records) > INDEX_MAX_RECORDS:
            self._records.popitem(last=False)

    def lookup(self, client_id: str) -> dict[str, Any] | None:
        """``{"request_id", "phase", "energy_j"}`` of the client's request (the sum over its prompts when it
        sent several), or None when no engine recorded it (yet). Blocking file I/O: call it off the loop."""
        with self._lock:
            self._refresh()
            pattern = _vllm_id_pattern(client_id)
            found = [r for engine_id, r in self._records.items() if client_id in engine_id
                     and pattern.fullmatch(engine_id)]  # fmt: skip
        if not found:
            return None
        return {"request_id": client_id, "phase": found[-1].get("phase"),
                "energy_j": sum(float(r.get("energy_j", 0.0)) for r in found)}  # fmt: skip

    def answer(self, client_id: str) -> tuple[bool | None, dict[str, Any] | None]:
        """(whether an engine measures energy, see :func:`measures_request_energy`; the record or None)."""
        measured = measures_request_energy(self._directory)
        return measured, (None if measured is False else self.lookup(client_id))


def request_energy(directory: Path, client_id: str) -> dict[str, Any] | None:
    """One-shot :meth:`RequestEnergyIndex.lookup` (reads every record file)."""
    return RequestEnergyIndex(directory).lookup(client_id)


def measures_request_energy(directory: Path) -> bool | None:
    """Whether any live engine measures energy (records requests); None when no engine state is known yet."""
    states = list(read_states(directory))
    if not states:
        return None
    return any(str(s.get("energy_source", "unknown")) != "unknown" for s in states)


async def request_record(index: RequestEnergyIndex | None, path_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of ``GET /voltana/requests/{id}``: 200 with the record; 404 with ``reason``
    ``not_yet`` (not published yet: ask again) or ``not_measured`` (no engine measures energy: it never
    will). The file reads run in a worker thread, never on vLLM's API server event loop."""
    client_id = id_from_path(path_id)
    if index is None:
        return 404, {"error": "this instance does not measure energy", "reason": NOT_MEASURED}
    measured, record = await asyncio.to_thread(index.answer, client_id)
    if measured is False:
        return 404, {"error": "this instance does not measure energy", "reason": NOT_MEASURED}
    if record is None:
        return 404, {"error": f"no finished request {client_id!r}", "reason": NOT_YET}
    return 200, record


def read_states(directory: Path, max_age_s: float | None = STATE_MAX_AGE_S) -> Iterator[dict[str, Any]]:
    """Fresh engine states in ``directory`` (files older than ``max_age_s`` are skipped; None: none is)."""
    now = time.time()
    for path in sorted(directory.glob("engine-*.json")):
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if max_age_s is None or now - float(state.get("updated_at_s", 0.0)) <= max_age_s:
            yield state


class VoltanaStateCollector:
    """API-server side: a Prometheus collector turning the state files into ``voltana:*`` samples."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Any]:
        states = list(read_states(self._directory))
        for name, doc in _GAUGES:
            family = GaugeMetricFamily(f"voltana:{name}", doc, labels=["engine"])
            for s in states:
                if s.get(name) is not None:
                    family.add_metric([str(s["engine"])], float(s[name]))
            yield family
        for name, doc in _COUNTERS:
            family_c = CounterMetricFamily(f"voltana:{name}", doc, labels=["engine"])
            for s in states:
                family_c.add_metric([str(s["engine"])], float(s.get(name, 0)))
            yield family_c
        info = InfoMetricFamily(
            "voltana:instance", "voltana role, policy and CUDA-graph capture sizes", labels=["engine"]
        )
        for s in states:
            info.add_metric(
                [str(s["engine"])],
                {
                    "instance_id": str(s.get("instance_id", "")),
                    "role": str(s.get("role", "")),
                    "policy": str(s.get("policy", "")),
                    "capture_sizes": ",".join(str(c) for c in s.get("capture_sizes", [])),
                    "energy_source": str(s.get("energy_source", "unknown")),
                },
            )
        yield info


STATE_PATH = "/voltana/state"


def state_payload(directory: Path) -> dict[str, Any]:
    """``GET /voltana/state``: engine 0's state at the top level (what the router reads: ``sm_clock_mhz``,
    ``capture_sizes``, ``role``, ``policy``, ``monitor_only`` ...) and every engine under ``replicas``."""
    states = sorted(read_states(directory), key=lambda s: int(s.get("engine", 0)))
    top = dict(states[0]) if states else {"monitor_only": None, "sm_clock_mhz": None, "capture_sizes": []}
    iterations = int(top.get("iterations", 0) or 0)
    top["hook_time_per_iteration_s"] = float(top.get("hook_seconds", 0.0)) / iterations if iterations else 0.0
    top["replicas"] = states
    return top


def control_dirs(engine_index: int = 0) -> tuple[Path, Path] | None:
    """(pin directory shared by every engine, this engine's control directory) for
    :mod:`voltana.adapters.engine_control`; None when no state directory was set up."""
    directory = state_dir()
    if directory is None:
        return None
    return directory / "control", directory / "control" / f"engine-{engine_index}"


def _add_control_routes(app: Any) -> None:
    """``POST/GET /voltana/clock`` and ``GET /voltana/iterations`` (engine 0's records; a pin holds for
    every data-parallel engine). The token comes from ``engine.clock_token``."""

    dirs = control_dirs(0)
    if dirs is not None:
        backend, token = FileControlBackend(*dirs), configured_clock_token()
        add_control_routes(app, backend, token)
        add_ceiling_routes(app, backend, token)  # the router's power budget (every engine reads it)


def install_state_route() -> bool:
    """Serve :data:`STATE_PATH` (and the profiling routes) from vLLM's API server, added right after
    vLLM's endpoint plugins attach.

    Returns False when this vLLM builds its app differently (the state stays available in ``/metrics``).
    """
    try:
        from vllm.entrypoints.launchers import app as app_module
    except ImportError:
        return False
    original = getattr(app_module, "attach_endpoint_plugins", None)
    if original is None:
        return False
    if getattr(original, "_voltana_state_route", False):
        return True
    # fastapi comes with the engine; voltana's core install has none (the router extra brings it)
    from fastapi.responses import JSONResponse

    async def voltana_state() -> Any:
        directory = state_dir()
        return JSONResponse(state_payload(directory) if directory else {})

    index: list[RequestEnergyIndex] = []

    async def voltana_request(request_id: str) -> Any:
        directory = state_dir()
        if directory is not None and not index:
            index.append(RequestEnergyIndex(directory))
        status, body = await request_record(index[0] if index else None, request_id)
        return JSONResponse(body, status_code=status)

    def attach_endpoint_plugins(app: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(app, *args, **kwargs)
        app.add_api_route(STATE_PATH, voltana_state, methods=["GET"])
        app.add_api_route(RECORD_ROUTE, voltana_request, methods=["GET"])
        _add_control_routes(app)
        return result

    attach_endpoint_plugins._voltana_state_route = True  # type: ignore[attr-defined]
    setattr(app_module, "attach_endpoint_plugins", attach_endpoint_plugins)  # noqa: B010 (module attr)
    return True


_collector_registered = False


def register_collector() -> None:
    """Add the collector to the default Prometheus registry once per process (what vLLM's /metrics serves)."""
    global _collector_registered
    if _collector_registered:
        return
    directory = state_dir(create=True)
    if directory is None:
        return

    REGISTRY.register(VoltanaStateCollector(directory))
    _collector_registered = True
