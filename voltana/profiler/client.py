"""HTTP client of one engine's profiling API, plus the clock lease the profiler keeps alive.

A :class:`ClockLease` pins through ``POST /voltana/clock`` and renews the pin from a daemon thread every
third of the lease: when the profiler process dies the renewals stop and the engine unpins within one
lease; when it ends (or Ctrl-C) :meth:`ClockLease.release` unpins at once.

HTTP goes through aiohttp, the router's client (one HTTP client for voltana, see
``benchmarks/bench_http_client.py``); the profiler is synchronous and threaded, so :class:`BlockingHttp` runs
one session on a private event-loop thread and waits for each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from voltana.profiler.engine_api import CLOCK_PATH, ITERATIONS_PATH
from voltana.profiler.errors import ProfilerError

STATE_PATH = "/voltana/state"
PIN_READBACK_TIMEOUT_S = 10.0
__all__ = ["BlockingHttp", "ClockLease", "EngineClient", "EngineInfo", "ProfilerError", "Reply"]


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


@dataclass(frozen=True, slots=True)
class Reply:
    """One whole HTTP answer."""

    status: int
    reason: str
    content_type: str
    content: bytes

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return json.loads(self.content)


class BlockingHttp:
    """Blocking HTTP calls over one aiohttp session living on a private event-loop thread (thread-safe:
    the lease renews from its own thread). ``timeout_s``: whole-call limit; connecting gets 5 s."""

    CONNECT_TIMEOUT_S = 5.0

    def __init__(self, timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=self.CONNECT_TIMEOUT_S, sock_connect=self.CONNECT_TIMEOUT_S
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="voltana-profiler-http", daemon=True
        )
        self._thread.start()
        self._session: aiohttp.ClientSession = self._wait(self._open())

    async def _open(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=self._timeout)

    def _wait(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """Send one request and read its whole answer; raises :class:`ProfilerError` (one line naming
        ``url``) when no answer comes (refused, reset, timed out)."""
        try:
            reply: Reply = self._wait(self._request(method, url, params, body, headers, timeout_s))
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = f": {exc}" if str(exc) else ""
            raise ProfilerError(f"{url}: {type(exc).__name__}{detail}") from None
        return reply

    async def _request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        body: Any,
        headers: Mapping[str, str] | None,
        timeout_s: float | None,
    ) -> Reply:
        timeout = (
            self._timeout
            if timeout_s is None
            else aiohttp.ClientTimeout(
                total=timeout_s, connect=self.CONNECT_TIMEOUT_S, sock_connect=self.CONNECT_TIMEOUT_S
            )
        )
        query = {k: str(v) for k, v in params.items()} if params else None
        async with self._session.request(
            method, url, params=query, json=body, headers=headers, timeout=timeout
        ) as answer:
            content = await answer.read()
            return Reply(answer.status, answer.reason or "", answer.headers.get("content-type", ""), content)

    def close(self) -> None:
        """Close the session and stop the loop thread."""
        if self._loop.is_closed():
            return
        self._wait(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _message(resp: Reply) -> str:
    """The engine's one-line reason: its JSON error message, else the HTTP reason and the content type (an
    HTML error page of something that is not a voltana engine is never dumped)."""
    try:
        body = resp.json()
        text = str(body.get("error", {}).get("message") or body) if isinstance(body, dict) else str(body)
    except ValueError:
        kind = (resp.content_type or "no body").split(";")[0]
        text = f"{resp.reason or 'error'} ({kind}, not a voltana API response)"
    return " ".join(text.split())[:300]


def _json(resp: Reply, url: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ProfilerError(f"{url} answered {resp.status} with {_message(resp)}") from None


class EngineClient:
    """Calls one engine (``url``) and sends its load to ``load_url`` (default: the engine itself)."""

    def __init__(self, url: str, token: str | None, load_url: str | None = None, timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.load_url = (load_url or url).rstrip("/")
        self.token = token
        self._http = BlockingHttp(timeout_s)

    def close(self) -> None:
        self._http.close()

    def _get(self, url: str, **params: Any) -> Any:
        resp = self._http.request("GET", url, params=params or None)
        if resp.status != 200:
            raise ProfilerError(f"GET {url} answered {resp.status}: {_message(resp)}")
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
        resp = self._http.request("POST", self.url + CLOCK_PATH, body=body, headers=headers, timeout_s=10.0)
        if resp.status != 200:
            hint = {403: " (set engine.clock_token on the engine)", 401: " (check engine.clock_token here)"}
            reason = _message(resp)
            extra = "" if "engine.clock_token" in reason else hint.get(resp.status, "")
            raise ProfilerError(f"{self.url} refused the clock ({resp.status}): {reason}{extra}")
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
        resp = self._http.request("POST", self.load_url + "/v1/completions", body=body)
        if resp.status != 200:
            raise ProfilerError(f"{self.load_url}/v1/completions answered {resp.status}: {_message(resp)}")


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
