"""W3C trace context carried with a request, so the router's and both phases' spans form one trace.

Headers travel as a small dict (``traceparent``, ``tracestate``): on ``RequestRecord.trace_headers``, or bound
to a request id with :class:`TraceContextRegistry` when the adapter sees headers apart from the record.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping

TRACE_HEADER_NAMES = ("traceparent", "tracestate")
DEFAULT_REGISTRY_CAPACITY = 65_536
"""Bound on remembered requests: a request that never finishes is forgotten after this many newer ones."""


def trace_headers_from(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The W3C trace-context entries among ``headers`` (names case-insensitive, returned lower-case)."""
    if not headers:
        return {}
    return {name.lower(): value for name, value in headers.items() if name.lower() in TRACE_HEADER_NAMES}


def new_traceparent() -> str:
    """A fresh, sampled W3C ``traceparent`` (random 128-bit trace id, 64-bit parent id)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id_of(traceparent: str) -> str | None:
    """The 32-hex trace id of a ``traceparent`` header, or None when it is malformed."""
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    return parts[1].lower()


class TraceContextRegistry:
    """Trace headers remembered per request id until its record is emitted (bounded, thread-safe)."""

    def __init__(self, capacity: int = DEFAULT_REGISTRY_CAPACITY) -> None:
        self._capacity = capacity
        self._headers: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def bind(self, request_id: str, headers: Mapping[str, str] | None) -> None:
        """Remember the trace headers among ``headers`` for ``request_id`` (no-op when there are none)."""
        found = trace_headers_from(headers)
        if not found:
            return
        with self._lock:
            self._headers[request_id] = found
            self._headers.move_to_end(request_id)
            while len(self._headers) > self._capacity:
                self._headers.popitem(last=False)

    def get(self, request_id: str) -> dict[str, str]:
        """The headers bound to ``request_id``, or an empty dict.

        Kept after reading: on a single-process P/D setup both phases of a request read them; the bound on
        the registry forgets old requests, :meth:`forget` drops one early.
        """
        with self._lock:
            return dict(self._headers.get(request_id, {}))

    def forget(self, request_id: str) -> None:
        """Drop what is bound to ``request_id``."""
        with self._lock:
            self._headers.pop(request_id, None)

    def clear(self) -> None:
        """Forget every request."""
        with self._lock:
            self._headers.clear()

    def __len__(self) -> int:
        return len(self._headers)
