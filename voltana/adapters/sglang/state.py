"""voltana's instance state next to SGLang's ``/v1/loads``: ``GET /voltana/state`` on the engine's HTTP port.

The router reads SGLang's own ``/v1/loads`` for requests and KV tokens; what SGLang does not know — the SM
clock voltana set and the decode CUDA-graph batch sizes EcoRoute packs against — comes from here. The
leader scheduler process publishes its state (:class:`~voltana.core.state_payload.InstanceStatePayload`,
the payload vLLM's adapter publishes too) to a small JSON file with the shared
:class:`~voltana.adapters.state_payload.StatePublisher` (a daemon thread, atomically, only when it
changed); the HTTP server process (a different process) serves it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from voltana.adapters.engine_control import FileControlBackend
from voltana.adapters.state_payload import StatePublisher
from voltana.adapters.state_payload import write_json_atomically as write_state
from voltana.core.state_payload import InstanceStatePayload
from voltana.profiler.ceiling_api import add_ceiling_routes
from voltana.profiler.engine_api import add_control_routes

log = logging.getLogger("voltana.sglang")

__all__ = [
    "STATE_ROUTE",
    "InstanceStatePayload",
    "StatePublisher",
    "binding_state",
    "read_state",
    "write_state",
]

STATE_ROUTE = "/voltana/state"


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

    backend = FileControlBackend(*control_dirs(port, 0, directory))
    add_control_routes(app, backend, token)
    add_ceiling_routes(app, backend, token)  # the router's power budget (every DP replica reads it)


def binding_state(binding: Any, dp_rank: int | None = None) -> InstanceStatePayload:
    """The state of one scheduler binding (runtime status, capture sizes, queue depths); a binding whose
    hook turned itself off is reported monitor-only with its reason."""
    return InstanceStatePayload.from_status(
        binding.runtime.status(),
        broken=binding.broken,
        engine=dp_rank or 0,
        capture_sizes=tuple(binding.capture_sizes),
        queues=asdict(binding.queues),
    )


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


def add_state_route(app: Any, port: int, directory: Path | None = None) -> None:
    """Serve ``GET /voltana/state`` on SGLang's FastAPI ``app`` (nulls until the leader has published)."""
    # fastapi comes with the engine; voltana's core install has none (the router extra brings it)
    from fastapi.responses import JSONResponse

    async def voltana_state() -> Any:
        state = read_state(port, directory)
        return JSONResponse(state if state is not None else {"sm_clock_mhz": None, "capture_sizes": []})

    if any(getattr(route, "path", None) == STATE_ROUTE for route in app.routes):
        return
    app.add_api_route(STATE_ROUTE, voltana_state, methods=["GET"])
