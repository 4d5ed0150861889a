"""HTTP client of one engine's profiling API, plus the clock lease the profiler keeps alive.

A :class:`ClockLease` pins through ``POST /voltana/clock`` and renews the pin from a daemon thread every
third of the lease: when the profiler process dies the renewals stop and the engine unpins within one
lease; when it ends (or Ctrl-C) :meth:`ClockLease.release` unpins at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from voltana.core.errors import VoltanaError
from voltana.profiler.engine_api import CLOCK_PATH, ITERATIONS_PATH

STATE_PATH = "/voltana/state"
PIN_READBACK_TIMEOUT_S = 10.0


class ProfilerError(VoltanaError, RuntimeError):
    """A problem the user can fix (engine unreachable, token refused, bad clock); ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the profiler needs to know about an engine before it starts."""

    url: str
    role: str  # prefill | decode | mixed
    model_id: str
    max_model_len: int
    allowed_clocks_mhz: tuple[int, ...]
    capture_sizes: tuple[int, ...]
    kv_capacity_tokens: int


def _message(resp: httpx.Response) -> str:
    """The engine's one-line reason: its JSON error message, else the HTTP reason and the content type (an
    HTML error page of something that is not a voltana engine is never dumped)."""
    try:
        body = resp.json()
        text = str(body.get("error", {}).get("message") or body) if isinstance(body, dict) else str(body)
    except ValueError:
        kind = resp.headers.get("content-type", "no body").split(";")[0]
        text = f"{resp.reason_phrase or 'error'} ({kind}, not a voltana API response)"
    return " ".join(text.split())[:300]


def _json(resp: httpx.Response, url: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ProfilerError(f"{url} answered {resp.status_code} with {_message(resp)}") from None


class EngineClient:
    """Calls one engine (``url``) and sends its load to ``load_url`` (default: the engine itself)."""

    def __init__(self, url: str, token: str | None, load_url: str | None = None, timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.load_url = (load_url or url).rstrip("/")
        self.token = token
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))

    def close(self) -> None:
        self._http.close()

    def _get(self, url: str, **params: Any) -> Any:
        try:
            resp = self._http.get(url, params=params or None)
        except httpx.HTTPError as exc:
            raise ProfilerError(f"{url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise ProfilerError(f"GET {url} answered {resp.status_code}: {_message(resp)}")
        return _json(resp, url)

    def info(self) -> EngineInfo:
        """Role, served model, allowed clocks and shape limits (``/voltana/state``, ``/voltana/clock``,
        ``/v1/models``); raises :class:`ProfilerError` when the engine has no voltana profiling API."""
        try:
            clock = self._get(self.url + CLOCK_PATH)
        except ProfilerError as exc:
            raise ProfilerError(f"{exc} (is voltana enabled on this engine, and new enough?)") from None
        state = self._get(self.url + STATE_PATH)
        models = self._get(self.load_url + "/v1/models").get("data") or [{}]
        allowed = tuple(int(c) for c in clock.get("allowed_clocks_mhz") or ())
        if clock.get("problem"):
            raise ProfilerError(f"{self.url} cannot pin clocks: {clock['problem']}")
        if not allowed:
            raise ProfilerError(f"{self.url} reports no allowed clocks")
        return EngineInfo(
            url=self.url,
            role=str(state.get("role") or state.get("phase") or "mixed"),
            model_id=str(models[0].get("id", "")),
            max_model_len=int(models[0].get("max_model_len") or 2048),
            allowed_clocks_mhz=allowed,
            capture_sizes=tuple(int(c) for c in state.get("capture_sizes") or ()),
            kv_capacity_tokens=int(state.get("kv_capacity_tokens") or 0),
        )

    def check_access(self) -> None:
        """Fail fast (ProfilerError) when the engine refuses our token or another client holds the clock:
        an unpin under a throw-away lease changes nothing and is answered like a pin."""
        self.post_clock(None, f"voltana-profile-check-{uuid.uuid4().hex[:8]}", 1.0)

    def clock_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get(self.url + CLOCK_PATH)
        return result

    def post_clock(self, clock_mhz: int | None, lease_id: str, lease_s: float) -> dict[str, Any]:
        """Pin (or with None unpin); raises :class:`ProfilerError` with the engine's one-line reason."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = {"clock_mhz": clock_mhz, "lease_id": lease_id, "lease_s": lease_s}
        try:
            resp = self._http.post(self.url + CLOCK_PATH, json=body, headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            raise ProfilerError(f"{self.url}{CLOCK_PATH}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            hint = {403: " (set engine.clock_token on the engine)", 401: " (check engine.clock_token here)"}
            reason = _message(resp)
            extra = "" if "engine.clock_token" in reason else hint.get(resp.status_code, "")
            raise ProfilerError(f"{self.url} refused the clock ({resp.status_code}): {reason}{extra}")
        result: dict[str, Any] = _json(resp, self.url + CLOCK_PATH)
        return result

    def iterations(self, since: int) -> tuple[list[dict[str, Any]], int, int]:
        """Every record after ``since``: (records, next since, records dropped unseen)."""
        records: list[dict[str, Any]] = []
        dropped = 0
        while True:
            page = self._get(self.url + ITERATIONS_PATH, since=since)
            records.extend(page["records"])
            dropped += int(page.get("dropped", 0))
            if not page["records"]:
                return records, int(page["next"]), dropped
            since = int(page["next"])

    def last_seq(self) -> int:
        """The newest record's sequence number (start collecting after it)."""
        _, nxt, _ = self.iterations(1 << 62)
        return nxt

    def complete(self, prompts: list[list[int]], max_tokens: int, model_id: str) -> None:
        """One completions request carrying a batch of token-id prompts (they reach the engine together)."""
        body = {
            "model": model_id,
            "prompt": prompts if len(prompts) > 1 else prompts[0],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        }
        try:
            resp = self._http.post(self.load_url + "/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise ProfilerError(f"{self.load_url}/v1/completions: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise ProfilerError(
                f"{self.load_url}/v1/completions answered {resp.status_code}: {_message(resp)}"
            )


class ClockLease:
    """One engine's clock pin, renewed in the background (see the module docstring)."""

    def __init__(self, client: EngineClient, lease_s: float = 10.0) -> None:
        self.client = client
        self.lease_s = lease_s
        self.lease_id = f"voltana-profile-{uuid.uuid4().hex[:12]}"
        self._clock: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failure: str = ""
        self._thread = threading.Thread(target=self._renew, name="voltana-lease", daemon=True)
        self._thread.start()

    def pin(self, clock_mhz: int) -> None:
        """Pin ``clock_mhz`` and wait until the engine has taken it up (read back); raises ProfilerError."""
        with self._lock:
            self.client.post_clock(clock_mhz, self.lease_id, self.lease_s)
            self._clock = clock_mhz
        deadline = time.monotonic() + PIN_READBACK_TIMEOUT_S
        while True:
            status = self.client.clock_status()
            if status.get("engine_pinned_mhz") == clock_mhz:
                return
            if time.monotonic() > deadline:
                raise ProfilerError(
                    f"{self.client.url} did not take up the pin of {clock_mhz} MHz within "
                    f"{PIN_READBACK_TIMEOUT_S:g}s (engine reports {status.get('engine_pinned_mhz')})"
                )
            time.sleep(0.05)

    def unpin(self) -> None:
        """Unpin now and stop renewing until the next :meth:`pin` (best effort: the lease lapses anyway)."""
        with self._lock:
            if self._clock is None:
                return
            self._clock = None
            with contextlib.suppress(ProfilerError):
                self.client.post_clock(None, self.lease_id, self.lease_s)

    def release(self) -> None:
        """Unpin and stop the renewal thread for good."""
        self._stop.set()
        self.unpin()

    def check(self) -> None:
        """Raise ProfilerError when a renewal failed (the pin may have lapsed)."""
        if self._failure:
            raise ProfilerError(self._failure)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3.0):
            with self._lock:
                if self._clock is None or self._stop.is_set():
                    continue
                try:
                    self.client.post_clock(self._clock, self.lease_id, self.lease_s)
                except ProfilerError as exc:
                    self._failure = f"renewing the clock lease failed: {exc}"
