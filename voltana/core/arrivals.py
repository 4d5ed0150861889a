"""Online estimate of the prompt tokens per second entering one prefill instance.

Each decision's snapshot shows the requests in the batch and in the waiting queue with their arrival times;
those that arrived after the newest one already counted are new. Their prompt tokens feed an exponentially
weighted sum with time constant ``window_s`` (like a load average): ``rate = sum / window_s`` tokens/s.
Queues are first come first served, so new requests sit at the tail, found by bisection on arrival time.
Nothing here raises on odd input (non-finite or backwards times are ignored).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from operator import attrgetter

from voltana.core.types import BatchSnapshot

_arrival_time_s = attrgetter("arrival_time_s")


class ArrivalRate:
    """Exponentially weighted prompt-token arrival rate (tokens/s) of one instance.

    Invariant: ``tokens >= 0``; ``newest_arrival_s`` never decreases.
    """

    __slots__ = ("last_update_s", "newest_arrival_s", "tokens", "window_s")

    def __init__(self, window_s: float) -> None:
        if not window_s > 0.0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = float(window_s)
        self.tokens = 0.0
        self.newest_arrival_s = -math.inf
        self.last_update_s = math.nan

    @property
    def tokens_per_s(self) -> float:
        """The current estimate (prompt tokens per second)."""
        return self.tokens / self.window_s

    def update(self, snapshot: BatchSnapshot) -> float:
        """Count the requests of ``snapshot`` not seen before; returns the new estimate (tokens/s)."""
        now_s = snapshot.now_s
        elapsed_s = now_s - self.last_update_s
        if elapsed_s > 0.0:  # False for the first update, NaN or a clock going backwards
            self.tokens *= math.exp(-elapsed_s / self.window_s)
        if math.isfinite(now_s):
            self.last_update_s = now_s
        newest = self.newest_arrival_s
        waiting = snapshot.waiting
        arrived = 0
        latest = newest
        if waiting and waiting[-1].arrival_time_s > newest:
            first_new = bisect_right(waiting, newest, key=_arrival_time_s)
            fresh = waiting[first_new:]
            arrived = sum(
                [q.prompt_tokens for q in fresh]
            )  # (fresh is empty only if the queue is out of order)
            latest = waiting[-1].arrival_time_s
        head_id = waiting[0].request_id if arrived else None
        for request in snapshot.requests:
            # A chunked prompt can be both running and still queued (the head of the queue): count it once.
            if request.arrival_time_s > newest and request.request_id != head_id:
                arrived += request.new_tokens  # tokens computed now (a cached prefix is no work)
                latest = max(latest, request.arrival_time_s)
        if arrived > 0:
            self.tokens += arrived
        if latest > newest and math.isfinite(latest):
            self.newest_arrival_s = latest
        return self.tokens / self.window_s
