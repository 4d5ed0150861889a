"""voltana's instance state next to SGLang's ``/v1/loads``: ``GET /voltana/state`` on the engine's HTTP port.

The router reads SGLang's own ``/v1/loads`` for requests and KV tokens; what SGLang does not know — the SM
clock voltana set and the decode CUDA-graph batch sizes EcoRoute packs against — comes from here. The
leader scheduler process publishes its state to a small JSON file (written off the hot path by a daemon
thread, atomically, only when it changed); the HTTP server process (a different process) serves it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger("voltana.sglang")

STATE_ROUTE = "/voltana/state"
PUBLISH_INTERVAL_S = 0.25


def state_dir() -> Path:
    """Where leader schedulers publish their state files (the system's temporary directory)."""
    return Path(tempfile.gettempdir())


def state_path(port: int, dp_rank: int | None = None, directory: Path | None = None) -> Path:
    """The state file of the instance serving HTTP on ``port`` (one per DP replica)."""
    return (directory or state_dir()) / f"voltana-sglang-{port}-dp{dp_rank or 0}.json"


def control_dirs(port: int, dp_rank: int | None = None, directory: Path | None = None) -> tuple[Path, Path]:
    """(pin directory of the instance on ``port``, one DP replica's control directory) for
    :mod:`voltana.adapters.engine_control`."""
    pin_dir = (directory or state_dir()) / f"voltana-sglang-{port}-control"
    return pin_dir, pin_dir / f"dp{dp_rank or 0}"


def add_control_routes_for_port(
    app: Any, port: int, token: str | None, directory: Path | None = None
) -> None:
    """``POST/GET /voltana/clock`` and ``GET /voltana/iterations`` (DP replica 0's records) on ``app``."""
    from voltana.adapters.engine_control import FileControlBackend
    from voltana.profiler.engine_api import add_control_routes

    add_control_routes(app, FileControlBackend(*control_dirs(port, 0, directory)), token)


def binding_state(binding: Any) -> dict[str, Any]:
    """The JSON-ready state of one scheduler binding (runtime status, capture sizes, queue depths)."""
    status = binding.runtime.status()
    return {
        "instance_id": binding.instance_id,
        "role": status.role,
        "sm_clock_mhz": status.sm_clock_mhz,
        "capture_sizes": list(binding.capture_sizes),
        "monitor_only": status.monitor_only or bool(binding.broken),
        "monitor_only_reason": status.monitor_only_reason or binding.broken,
        "policy": status.policy,
        "iterations": status.iterations,
        "hook_time_per_iteration_s": status.hook_time_per_iteration_s,
        "energy_source": status.energy_source.value,
        "energy_joules": status.energy_j,
        "idle_energy_joules": status.idle_energy_j,
        "queues": asdict(binding.queues),
    }


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``state`` as JSON."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def read_state(port: int, directory: Path | None = None) -> dict[str, Any] | None:
    """The published state of the instance on ``port`` (DP replica 0 first, all under ``replicas``)."""
    replicas: list[dict[str, Any]] = []
    for path in sorted((directory or state_dir()).glob(f"voltana-sglang-{port}-dp*.json")):
        try:
            replicas.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # being replaced right now, or gone
    if not replicas:
        return None
    return {**replicas[0], "replicas": replicas}


class StatePublisher:
    """A daemon thread that writes ``source()`` to ``path`` every ``interval_s`` when it changed."""

    def __init__(
        self, path: Path, source: Callable[[], dict[str, Any]], interval_s: float = PUBLISH_INTERVAL_S
    ):
        self.path = path
        self._source = source
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._last = ""
        self._thread = threading.Thread(target=self._run, name="voltana-state", daemon=True)

    def start(self) -> StatePublisher:
        """Publish once now, then keep publishing in the background."""
        self.publish()
        self._thread.start()
        return self

    def publish(self) -> None:
        """Write the state if it changed; never raises."""
        try:
            state = self._source()
            text = json.dumps(state, sort_keys=True)
            if text != self._last:
                write_state(self.path, {**state, "updated_at_s": time.time()})
                self._last = text
        except Exception as exc:
            log.warning("voltana: cannot publish instance state to %s: %s", self.path, exc)

    def close(self) -> None:
        """Stop publishing and remove the state file."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self._interval_s)
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.publish()


def add_state_route(app: Any, port: int, directory: Path | None = None) -> None:
    """Serve ``GET /voltana/state`` on SGLang's FastAPI ``app`` (nulls until the leader has published)."""
    from fastapi.responses import JSONResponse

    async def voltana_state() -> JSONResponse:
        state = read_state(port, directory)
        return JSONResponse(state if state is not None else {"sm_clock_mhz": None, "capture_sizes": []})

    if any(getattr(route, "path", None) == STATE_ROUTE for route in app.routes):
        return
    app.add_api_route(STATE_ROUTE, voltana_state, methods=["GET"])
