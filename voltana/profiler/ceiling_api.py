"""The engine-side power-budget API: ``POST /voltana/ceiling`` (the router's coordinator pushes a clock
ceiling under a lease) and ``GET /voltana/ceiling`` (what is in force).

How instances learn their ceiling: **the router pushes** (one mechanism, for vLLM, SGLang and the emulator).
Every ``cluster.budget_period_s`` the router's coordinator posts each instance its ceiling with
``Authorization: Bearer <engine.clock_token>`` (the token of ``POST /voltana/clock``: no token configured on
the engine -> 403, missing or wrong -> 401) and the body ``{"ceiling_mhz": 1200, "lease_s": 3}``;
``{"ceiling_mhz": null}`` lifts it. A ceiling lapses ``lease_s`` after the last push (at most
:data:`MAX_CEILING_LEASE_S`): a router that dies leaves the clocks to the policies (and to the GPUs' own power
limits) within one lease instead of holding them low forever. The engine's controllers clamp every decision
to the live ceiling (``FrequencyController.set_clock_ceiling``); a pin (``POST /voltana/clock``, profiling)
is not clamped.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from voltana.profiler.engine_api import ClockPin, check_token, json_post_handler

CEILING_PATH = "/voltana/ceiling"
DEFAULT_CEILING_LEASE_S = 3.0
MAX_CEILING_LEASE_S = 60.0


CEILING_LEASE_ID = "voltana-router"
"""The lease id a ceiling is stored under (a ceiling is held like a clock pin: :class:`ClockPin`)."""


class CeilingBackend(Protocol):
    """Where an engine keeps the ceiling (in process, or a file its scheduler process reads)."""

    def current_ceiling(self) -> ClockPin | None: ...

    def set_ceiling(self, lease: ClockPin | None) -> None: ...


def ceiling_status(backend: CeilingBackend) -> dict[str, Any]:
    """``GET /voltana/ceiling``: the live ceiling (MHz, None: none) and when it lapses."""
    lease = backend.current_ceiling()
    live = lease if lease is not None and lease.live() else None
    return {
        "ceiling_mhz": live.clock_mhz if live else None,
        "expires_in_s": round(live.expires_at_s - time.time(), 3) if live else None,
    }


def handle_ceiling(
    backend: CeilingBackend, token: str | None, authorization: str | None, body: Any
) -> tuple[int, dict[str, Any]]:
    """``POST /voltana/ceiling``: (HTTP status, JSON body)."""
    denied = check_token(token, authorization, path=CEILING_PATH, feature="the clock ceiling (power budget)")
    if denied is not None:
        return denied
    if not isinstance(body, dict) or "ceiling_mhz" not in body:
        return 422, _problem('body must be {"ceiling_mhz": MHz or null, "lease_s": seconds}')
    ceiling = body["ceiling_mhz"]
    lease_s = body.get("lease_s", DEFAULT_CEILING_LEASE_S)
    if (
        isinstance(lease_s, bool)
        or not isinstance(lease_s, int | float)
        or not 0 < lease_s <= MAX_CEILING_LEASE_S
    ):
        return 422, _problem(f"lease_s must be in (0, {MAX_CEILING_LEASE_S:g}] seconds")
    if ceiling is None:
        backend.set_ceiling(None)
        return 200, ceiling_status(backend)
    if (
        isinstance(ceiling, bool)
        or not isinstance(ceiling, int | float)
        or not math.isfinite(ceiling)
        or ceiling <= 0
    ):
        return 422, _problem("ceiling_mhz must be a positive clock (MHz) or null")
    backend.set_ceiling(ClockPin(int(ceiling), CEILING_LEASE_ID, time.time() + float(lease_s)))
    return 200, ceiling_status(backend)


def _problem(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "code": 422}}


def add_ceiling_routes(app: Any, backend: CeilingBackend, token: str | None) -> None:
    """Add ``POST``/``GET /voltana/ceiling`` to a Starlette/FastAPI ``app`` (once)."""
    if any(getattr(route, "path", None) == CEILING_PATH for route in getattr(app, "routes", ())):
        return
    # starlette loads where routes are served (engines, emulator), not in the core install
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415

    post_ceiling = json_post_handler(
        lambda authorization, body: handle_ceiling(backend, token, authorization, body)
    )

    async def get_ceiling(request: Request) -> JSONResponse:
        return JSONResponse(ceiling_status(backend))

    app.add_route(CEILING_PATH, post_ceiling, methods=["POST"])
    app.add_route(CEILING_PATH, get_ceiling, methods=["GET"])


def clock_under(allowed_mhz: tuple[int, ...], clock_mhz: int, ceiling_mhz: int) -> int:
    """``clock_mhz`` held at or below ``ceiling_mhz``: the highest of ``allowed_mhz`` (ascending) not above
    it, the lowest allowed clock when the ceiling is below all of them."""
    if clock_mhz <= ceiling_mhz:
        return clock_mhz
    return max((c for c in allowed_mhz if c <= ceiling_mhz), default=allowed_mhz[0])


class MemoryCeiling:
    """An in-process :class:`CeilingBackend` (the emulator; an engine whose scheduler shares the HTTP
    process): :meth:`ceiling_mhz` is the live ceiling or None."""

    def __init__(self) -> None:
        self._lease: ClockPin | None = None

    def current_ceiling(self) -> ClockPin | None:
        return self._lease

    def set_ceiling(self, lease: ClockPin | None) -> None:
        self._lease = lease

    def ceiling_mhz(self) -> int | None:
        """The live ceiling (MHz), or None (none pushed, or its lease lapsed)."""
        lease = self._lease
        return lease.clock_mhz if lease is not None and lease.live() else None
