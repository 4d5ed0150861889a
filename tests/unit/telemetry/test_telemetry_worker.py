"""The request hand-off queue: never blocks the producer, drops and counts when full, survives errors."""

from __future__ import annotations

import threading

import pytest
from telemetry_helpers import wait_until

from voltana.plugins.telemetry.worker import BackgroundQueue


def test_a_full_queue_drops_with_one_warning_and_a_stuck_worker_never_blocks_put(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    processed: list[int] = []

    def slow(item: int) -> None:
        release.wait(10)  # the worker is stuck on its first item
        processed.append(item)

    queue: BackgroundQueue[int] = BackgroundQueue(slow, what="items", capacity=3, poll_s=0.01)
    queue.put(0)
    assert wait_until(lambda: len(queue) == 0)  # the worker took item 0 and is stuck in it
    with caplog.at_level("WARNING", logger="voltana.telemetry"):
        for item in range(1, 11):
            queue.put(item)
    assert len(queue) == 3 and queue.dropped == 7
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 1
    release.set()
    queue.close()
    assert processed == [0, 1, 2, 3]


def test_processing_errors_are_counted_and_the_worker_keeps_going() -> None:
    seen: list[int] = []

    def picky(item: int) -> None:
        if item % 2:
            raise ValueError("odd")
        seen.append(item)

    queue: BackgroundQueue[int] = BackgroundQueue(picky, what="items", poll_s=0.01)
    for item in range(6):
        queue.put(item)
    assert wait_until(lambda: len(seen) == 3)
    queue.close()
    assert seen == [0, 2, 4] and queue.failed == 3
