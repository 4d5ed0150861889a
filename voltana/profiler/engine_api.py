"""The engine-side profiling API: ``POST /voltana/clock`` (pin/unpin under a lease) and
``GET /voltana/iterations?since=SEQ`` (per-iteration records from a bounded ring buffer).

One contract for vLLM, SGLang and the emulator; each provides a :class:`ControlBackend`. Rules:

- ``POST /voltana/clock`` needs ``Authorization: Bearer <engine.clock_token>``: no token configured on the
  engine -> 403 (the endpoint is off); missing or wrong token -> 401; a clock outside the instance's allowed
  clocks -> 422 listing them; a live pin held by another lease -> 409; clock control off (monitor-only) ->
  409. Body ``{"clock_mhz": 1200, "lease_id": "...", "lease_s": 10}`` pins (or renews); ``{"clock_mhz":
  null, "lease_id": "..."}`` unpins. A pin lapses ``lease_s`` after its last renewal, so a profiler that is
  killed leaves the clock to the policy again within one lease.
- ``GET /voltana/clock`` (no token) says what is pinned and the allowed clocks.
- ``GET /voltana/iterations?since=SEQ&limit=N`` returns records with ``seq > since`` (oldest first),
  ``next`` (pass it as ``since`` next time) and ``dropped`` (records that left the ring unseen).
"""

from __future__ import annotations

import hmac
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from voltana.core.types import DecisionReason, IterationRecord

CLOCK_PATH = "/voltana/clock"
ITERATIONS_PATH = "/voltana/iterations"
DEFAULT_LEASE_S = 10.0
MAX_LEASE_S = 300.0
"""Longest lease a client may ask for: a killed profiler never holds a clock longer than this."""
DEFAULT_RING_CAPACITY = 4096
MAX_PAGE = 2000
"""Most records one ``GET /voltana/iterations`` returns (ask again with ``since=next`` for more)."""


@dataclass(frozen=True, slots=True)
class ClockPin:
    """A clock held by one client until ``expires_at_s`` (wall clock, ``time.time()``)."""

    clock_mhz: int
    lease_id: str
    expires_at_s: float

    def live(self, now_s: float | None = None) -> bool:
        """True while the lease has not lapsed."""
        return (time.time() if now_s is None else now_s) < self.expires_at_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ClockPin:
        return cls(int(doc["clock_mhz"]), str(doc["lease_id"]), float(doc["expires_at_s"]))


def record_json(record: IterationRecord, seq: int = 0) -> dict[str, Any]:
    """The wire form of one :class:`IterationRecord` (see :func:`iteration_json`)."""
    snap = record.snapshot
    decision = record.decision
    return iteration_json(
        seq=seq,
        t_s=record.start_time_s,
        phase=snap.phase.value,
        batch_size=snap.batch_size,
        new_tokens=snap.num_new_tokens,
        context_tokens=snap.num_context_tokens,
        clock_mhz=record.applied_clock_mhz,
        decided_mhz=decision.clock_mhz,
        reason=str(decision.reason),
        latency_s=record.latency_s,
        energy_j=record.energy_j,
    )


def iteration_json(
    *,
    seq: int,
    t_s: float,
    phase: str,
    batch_size: int,
    new_tokens: int,
    context_tokens: int,
    clock_mhz: int,
    decided_mhz: int,
    reason: str,
    latency_s: float,
    energy_j: float | None,
) -> dict[str, Any]:
    """One iteration on the wire: batch shape (requests, new tokens, context tokens), the clock it ran at
    (read back, MHz), the decided clock and why, ``pinned_mhz`` (the pinned clock when a client pinned it,
    else None), latency (s) and measured energy (J, None when unmeasured)."""
    return {
        "seq": seq,
        "t_s": t_s,
        "phase": phase,
        "batch_size": batch_size,
        "new_tokens": new_tokens,
        "context_tokens": context_tokens,
        "clock_mhz": clock_mhz,
        "decided_mhz": decided_mhz,
        "reason": reason,
        "pinned_mhz": decided_mhz if reason == DecisionReason.PINNED else None,
        "latency_s": latency_s,
        "energy_j": energy_j,
    }


@dataclass(frozen=True, slots=True)
class IterationPage:
    """One answer of ``GET /voltana/iterations``."""

    records: list[dict[str, Any]]
    next: int
    dropped: int
    capacity: int

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "next": self.next,
            "dropped": self.dropped,
            "capacity": self.capacity,
        }


class IterationRing:
    """A bounded ring of iteration records (wire dicts) numbered from 1; thread-safe appends (deque)."""

    def __init__(self, capacity: int = DEFAULT_RING_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._last_seq = 0

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest record (0 when none yet)."""
        return self._last_seq

    def append(self, item: dict[str, Any]) -> int:
        """Add a record (its ``seq`` is set here); returns the seq."""
        self._last_seq += 1
        item["seq"] = self._last_seq
        self._items.append(item)
        return self._last_seq

    def since(self, seq: int, limit: int = MAX_PAGE) -> IterationPage:
        """Records with ``seq`` greater than ``seq``, oldest first, at most ``limit``."""
        return page_from(list(self._items), seq, limit, self.capacity)


def page_from(items: list[dict[str, Any]], since: int, limit: int, capacity: int) -> IterationPage:
    """The page of ``items`` (ascending ``seq``) after ``since``."""
    first = items[0]["seq"] if items else since + 1
    dropped = max(0, first - since - 1)
    chosen = [item for item in items if item["seq"] > since][: max(1, limit)]
    # Nothing newer: ``next`` is the newest seq, so a client ahead of the ring (the engine restarted, or it
    # asked for "from now on" with a huge ``since``) continues from the newest record.
    last = chosen[-1]["seq"] if chosen else (items[-1]["seq"] if items else 0)
    return IterationPage(chosen, last, dropped, capacity)


class ControlBackend(Protocol):
    """What one engine instance offers the profiling API (in-process or across processes)."""

    def allowed_clocks_mhz(self) -> tuple[int, ...]:
        """Clocks a pin may name (ascending MHz); empty while unknown (engine not started yet)."""

    def control_problem(self) -> str:
        """Why clocks cannot be pinned now ("" when they can): monitor-only, engine not ready."""

    def current_pin(self) -> ClockPin | None:
        """The pin the clients hold (may be lapsed; callers check :meth:`ClockPin.live`)."""

    def set_pin(self, pin: ClockPin | None) -> None:
        """Pin (or with None unpin) the instance's clock."""

    def applied_clock_mhz(self) -> int | None:
        """The clock the engine reports it runs at (read back), if known."""

    def engine_pinned_mhz(self) -> int | None:
        """The pin the engine itself has taken up (may lag :meth:`current_pin` across processes)."""

    def iterations_since(self, since: int, limit: int) -> IterationPage:
        """Records after ``since``."""


def _error(status: int, message: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "code": status}, **extra}


def check_token(
    configured: str | None,
    authorization: str | None,
    *,
    path: str = CLOCK_PATH,
    feature: str = "clock pinning",
) -> tuple[int, dict[str, Any]] | None:
    """None when the bearer token matches; else (403 no token configured | 401 missing/wrong, body).

    ``path`` and ``feature`` name the route in the messages (``/voltana/clock`` or ``/voltana/ceiling``)."""
    if not configured:
        return _error(403, f"{feature} is off on this engine: set engine.clock_token to enable {path}")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), configured.encode()):
        return _error(401, f"missing or wrong bearer token for {path} (engine.clock_token)")
    return None


def clock_status(backend: ControlBackend) -> dict[str, Any]:
    """``GET /voltana/clock``: the live pin, what the engine applied and the allowed clocks."""
    pin = backend.current_pin()
    live = pin if pin is not None and pin.live() else None
    return {
        "pinned_mhz": live.clock_mhz if live else None,
        "lease_id": live.lease_id if live else None,
        "expires_in_s": round(live.expires_at_s - time.time(), 3) if live else None,
        "engine_pinned_mhz": backend.engine_pinned_mhz(),
        "applied_clock_mhz": backend.applied_clock_mhz(),
        "allowed_clocks_mhz": list(backend.allowed_clocks_mhz()),
        "problem": backend.control_problem(),
    }


def handle_pin(
    backend: ControlBackend, token: str | None, authorization: str | None, body: Any
) -> tuple[int, dict[str, Any]]:
    """``POST /voltana/clock``: (HTTP status, JSON body) following the rules in the module docstring."""
    denied = check_token(token, authorization)
    if denied is not None:
        return denied
    if not isinstance(body, dict) or "clock_mhz" not in body or not isinstance(body.get("lease_id"), str):
        return _error(422, 'body must be {"clock_mhz": MHz or null, "lease_id": "...", "lease_s": seconds}')
    lease_id = body["lease_id"].strip()
    lease_s = body.get("lease_s", DEFAULT_LEASE_S)
    if not lease_id or not isinstance(lease_s, int | float) or not 0 < lease_s <= MAX_LEASE_S:
        return _error(422, f"lease_id must be non-empty and lease_s in (0, {MAX_LEASE_S:g}] seconds")
    held = backend.current_pin()
    held = held if held is not None and held.live() else None
    if held is not None and held.lease_id != lease_id:
        return _error(
            409, f"clock is pinned at {held.clock_mhz} MHz by another lease", **clock_status(backend)
        )
    clock = body["clock_mhz"]
    if clock is None:
        backend.set_pin(None)
        return 200, clock_status(backend)
    allowed = backend.allowed_clocks_mhz()
    if isinstance(clock, bool) or not isinstance(clock, int | float) or not math.isfinite(clock):
        return _error(422, f"clock_mhz must be one of the allowed clocks {list(allowed)}")
    if int(clock) not in allowed:
        return _error(
            422,
            f"clock {clock} MHz is not allowed here; allowed: {list(allowed)}",
            allowed_clocks_mhz=list(allowed),
        )
    problem = backend.control_problem()
    if problem:
        return _error(409, f"cannot pin: {problem}")
    backend.set_pin(ClockPin(int(clock), lease_id, time.time() + float(lease_s)))
    return 200, clock_status(backend)


def handle_iterations(backend: ControlBackend, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """``GET /voltana/iterations?since=SEQ&limit=N``."""
    try:
        since = int(query.get("since", "0"))
        limit = min(int(query.get("limit", str(MAX_PAGE))), MAX_PAGE)
    except ValueError:
        return _error(422, "since and limit must be integers")
    return 200, backend.iterations_since(max(0, since), max(1, limit)).to_json()


Handler = Callable[[Any], Awaitable[Any]]


def json_post_handler(handle: Callable[[str | None, Any], tuple[int, dict[str, Any]]]) -> Handler:
    """An async Starlette handler answering ``handle(authorization header, JSON body)``, which returns
    ``(status, payload)``, as JSON; a body that is not JSON is passed as None (``handle`` answers 422)."""
    # starlette loads where routes are served (engines, emulator), not in the profiler's client
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415

    async def post(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        status, payload = handle(request.headers.get("authorization"), body)
        return JSONResponse(payload, status_code=status)

    return post


def starlette_handlers(backend: ControlBackend, token: str | None) -> dict[tuple[str, str], Handler]:
    """``{(path, method): async handler(request)}`` for Starlette or FastAPI apps (``add_route``)."""
    # starlette loads where routes are served (engines, emulator), not in the profiler's client
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415

    post_clock = json_post_handler(
        lambda authorization, body: handle_pin(backend, token, authorization, body)
    )

    async def get_clock(request: Request) -> JSONResponse:
        return JSONResponse(clock_status(backend))

    async def get_iterations(request: Request) -> JSONResponse:
        status, payload = handle_iterations(backend, request.query_params)
        return JSONResponse(payload, status_code=status)

    return {
        (CLOCK_PATH, "POST"): post_clock,
        (CLOCK_PATH, "GET"): get_clock,
        (ITERATIONS_PATH, "GET"): get_iterations,
    }


def add_control_routes(app: Any, backend: ControlBackend, token: str | None) -> None:
    """Add the profiling routes to a Starlette/FastAPI ``app`` (once; a second call is a no-op)."""
    if any(getattr(route, "path", None) == ITERATIONS_PATH for route in getattr(app, "routes", ())):
        return
    for (path, method), handler in starlette_handlers(backend, token).items():
        app.add_route(path, handler, methods=[method])


class MemoryControl:
    """An in-process :class:`ControlBackend` for an engine whose scheduler shares the HTTP process (the
    emulator): the pin and the ring live here, and the engine asks :meth:`clock_mhz` every iteration."""

    def __init__(
        self,
        allowed_clocks_mhz: tuple[int, ...],
        default_clock_mhz: int,
        capacity: int = DEFAULT_RING_CAPACITY,
    ) -> None:
        self._allowed = tuple(sorted(set(allowed_clocks_mhz)))
        self.default_clock_mhz = default_clock_mhz
        self.ring = IterationRing(capacity)
        self._pin: ClockPin | None = None

    def clock_mhz(self) -> tuple[int, bool]:
        """(clock of the next iteration, pinned?): the live pin, else the default; drops a lapsed pin."""
        pin = self._pin
        if pin is not None and pin.live():
            return pin.clock_mhz, True
        self._pin = None
        return self.default_clock_mhz, False

    def allowed_clocks_mhz(self) -> tuple[int, ...]:
        return self._allowed

    def control_problem(self) -> str:
        return ""

    def current_pin(self) -> ClockPin | None:
        return self._pin

    def set_pin(self, pin: ClockPin | None) -> None:
        self._pin = pin

    def applied_clock_mhz(self) -> int | None:
        return self.clock_mhz()[0]

    def engine_pinned_mhz(self) -> int | None:
        clock, pinned = self.clock_mhz()
        return clock if pinned else None

    def iterations_since(self, since: int, limit: int) -> IterationPage:
        return self.ring.since(since, limit)
