"""The adapters' threaded publisher of an instance's ``/voltana/state``
(:class:`~voltana.core.state_payload.InstanceStatePayload`, the payload every engine side shares).

:class:`StatePublisher` writes payloads to a file from its own daemon thread, so the engine thread never
serialises JSON or touches the file system: :meth:`StatePublisher.submit` is one reference store and an event
set (latest wins; a payload not yet written is replaced). With a ``source`` it also polls the source every
``interval_s`` (SGLang's leader scheduler). Files are replaced atomically; an unchanged payload (ignoring
``updated_at_s``) is not rewritten.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from voltana.core.files import write_text_atomically
from voltana.core.state_payload import InstanceStatePayload

log = logging.getLogger("voltana.adapters")

PUBLISH_INTERVAL_S = 0.25
"""Default time between two state writes of one instance (s)."""


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON (a reader never sees half a file). Raises OSError."""
    write_text_atomically(path, json.dumps(data, separators=(",", ":")))


class StatePublisher:
    """Writes an instance's latest :class:`InstanceStatePayload` to ``path`` from a daemon thread.

    ``path`` None: publishing is off (every call is a no-op). ``source``: polled every ``interval_s`` on the
    thread. ``after_write``: called on the thread after each write attempt (e.g. flushing a request log), so
    its I/O stays off the caller's thread too. Never raises to the caller; write errors are logged once.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        source: Callable[[], InstanceStatePayload] | None = None,
        after_write: Callable[[], None] | None = None,
        interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.writes = 0
        """Files written so far (tests, benchmarks)."""
        self._source = source
        self._after_write = after_write
        self._pending: InstanceStatePayload | None = None
        self._submitted = 0  # submits so far (caller's thread)
        self._handled = 0  # the submit count the thread had seen when it last took a payload
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_text = ""
        self._last_submit_s = -float("inf")
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="voltana-state", daemon=True)

    def start(self) -> StatePublisher:
        """Start the thread (idempotent); with a ``source``, write its first payload now (caller's thread)."""
        if self.path is not None and not self._thread.is_alive() and not self._stop.is_set():
            if self._source is not None:
                self._write_from_source()  # readers see a state from the start
            self._thread.start()
        return self

    def due(self) -> bool:
        """True when ``interval_s`` passed since the last :meth:`submit` (cheap: build a payload then)."""
        return self.path is not None and time.monotonic() - self._last_submit_s >= self.interval_s

    def submit(self, payload: InstanceStatePayload) -> None:
        """Hand ``payload`` to the thread; returns at once (latest wins)."""
        if self.path is None:
            return
        self._last_submit_s = time.monotonic()
        self._pending = payload
        self._submitted += 1
        self._wake.set()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until what was submitted is written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._handled < self._submitted and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, remove: bool = True) -> None:
        """Write what is pending, stop the thread and (``remove``) delete the file; idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(2.0, 2 * self.interval_s))
        if remove and self.path is not None:
            self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while True:
            if self._source is not None:
                self._write_from_source()
            self._wake.wait(self.interval_s)
            self._wake.clear()
            seen = self._submitted
            payload, self._pending = self._pending, None
            if payload is not None:
                self._write(payload)
            self._handled = seen
            if self._stop.is_set():
                return

    def _write_from_source(self) -> None:
        assert self._source is not None
        try:
            payload = self._source()
        except Exception as exc:
            self._warn(exc)
            return
        self._write(payload)

    def _write(self, payload: InstanceStatePayload) -> None:
        assert self.path is not None
        data = payload.to_json()
        text = json.dumps({k: v for k, v in data.items() if k != "updated_at_s"}, sort_keys=True)
        try:
            if text != self._last_text:
                write_json_atomically(self.path, data)
                self._last_text = text
                self.writes += 1
        except (OSError, TypeError, ValueError) as exc:
            self._warn(exc)
        if self._after_write is not None:
            try:
                self._after_write()
            except Exception as exc:
                self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("voltana: cannot publish instance state to %s: %s", self.path, exc)
