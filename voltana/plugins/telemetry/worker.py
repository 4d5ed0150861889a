"""A bounded hand-off from the engine's thread to one daemon worker (span building costs ~100 µs per request).

``put`` is a length check and a ``deque.append`` (atomic under the GIL): well under a microsecond, never
blocks. When the queue is full the item is dropped and counted (one warning). Processing errors are caught
and logged once; the worker never dies of them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("voltana.telemetry")
T = TypeVar("T")


class BackgroundQueue(Generic[T]):
    """Items handed to ``process`` on a daemon thread, oldest first; ``drain`` also works from any thread."""

    def __init__(
        self, process: Callable[[T], None], *, what: str, capacity: int = 8192, poll_s: float = 0.05
    ) -> None:
        self._process = process
        self._what = what
        self._capacity = capacity
        self._poll_s = poll_s
        self._items: deque[T] = deque()
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=f"voltana-telemetry-{what}", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue ``item`` (the hot path: no lock, no allocation beyond the deque slot)."""
        if len(self._items) >= self._capacity:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "telemetry: %s queue full (%d); dropping until the worker catches up",
                    self._what,
                    self._capacity,
                )
            return
        self._items.append(item)

    def drain(self) -> int:
        """Process everything queued now, in the calling thread; returns how many items were processed."""
        processed = 0
        with self._drain_lock:
            while True:
                try:
                    item = self._items.popleft()
                except IndexError:
                    return processed
                try:
                    self._process(item)
                except Exception as exc:
                    self.failed += 1
                    if self.failed == 1:
                        logger.warning(
                            "telemetry: recording %s failed (%s: %s); serving continues",
                            self._what,
                            type(exc).__name__,
                            exc,
                        )
                processed += 1

    def __len__(self) -> int:
        return len(self._items)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (bounded by ``timeout_s``) and process what is left."""
        self._stop.set()
        self._thread.join(timeout_s)
        self.drain()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._items:
                self.drain()
            else:
                self._stop.wait(self._poll_s)
