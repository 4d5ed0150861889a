"""Online estimate of the load entering one decode instance: requests per second and tokens per request.

A decode instance sees, at every decision, the requests in its running batch and in its admission queue
(``BatchSnapshot.waiting``: requests whose KV arrived and that wait for a batch slot or KV space). From the
ids that appear and disappear between decisions it measures, as exponentially weighted sums (a load average):

- ``rate_rps``: requests entering the instance per second (time constant ``window_s``; the requests already
  there at the first update count as arrivals);
- ``output_tokens``: tokens generated per request that left, i.e. the expected output of a request (every
  request of the previous iteration's batch produced one token; time constant ``OUTPUT_WINDOW_FACTOR x
  window_s``, as output lengths vary far more than arrivals). ``None`` until a few requests have left;
- ``waiting_since_s``: when each request of the admission queue was first seen there (the measured backlog);
- ``short_decode_tokens``: a low quantile (``SHORT_OUTPUT_QUANTILE``) of the decoded lengths of the last
  ``LENGTH_SAMPLES`` requests that left (the iterations each ran, one token each: its output less the first
  token, which prefill made; a preempted request's restart is not told apart). A waiting request's wait is
  spread over its own inter-token gaps, whose number the engine does not know in advance: checking the
  waiting requests for this short an output keeps all but the shortest ``SHORT_OUTPUT_QUANTILE`` of them
  within the ITL bound, where the mean would let every request shorter than the mean miss (more than half of
  ShareGPT's outputs are).

- ``itl_so_far(id)``: for a running request, the time since this instance first saw it (its wait for
  admission included) and the tokens it has run since: its mean ITL so far (EcoFreq brings back the requests
  that fell behind the bound); ``last_gap_s``, the time between the last two updates (the last iteration).

By Little's law a stable instance runs ``rate_rps * output_tokens * ITL`` requests at once; EcoFreq uses this
to tell the clocks that carry the measured load from those it may only time-share while the backlog they build
stays within the ITL bound (see :mod:`voltana.plugins.ecofreq`). Preempted
requests that go back to the queue are not new arrivals (an id counts once while it is running or waiting).
Nothing here raises on odd input (non-finite or backwards times only skip the decay).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque

from voltana.core.types import BatchSnapshot

OUTPUT_WINDOW_FACTOR = 5.0
"""The output-length estimate averages over this many arrival windows."""
MIN_DEPARTURES = 3.0
"""Weighted departures needed before ``output_tokens`` is reported."""
SHORT_OUTPUT_QUANTILE = 0.01
"""Quantile of measured output lengths taken as a waiting request's output: at most 1% of the waiting requests
(all of them only when every request waits) are shorter and may miss the ITL bound through their wait (the
project compares attainment to static max's within 0.5 points; the queue forms only under load, for a part of
the requests)."""
LENGTH_SAMPLES = 512
"""Output lengths of the most recent departures kept for ``short_decode_tokens``."""


class DecodeDemand:
    """Measured decode load of one instance (see module docstring).

    Invariants: the weighted sums are >= 0; ``present`` holds the ids running or waiting at the last update,
    ``running`` the set of ``running_ids``, those running.
    """

    __slots__ = (
        "arrivals",
        "departures",
        "first_update_s",
        "iteration",
        "joined",
        "last_batch",
        "last_gap_s",
        "last_update_s",
        "lengths",
        "ordered",
        "present",
        "running",
        "running_ids",
        "started_s",
        "tokens",
        "waiting_since_s",
        "window_s",
    )

    def __init__(self, window_s: float) -> None:
        if not window_s > 0.0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = float(window_s)
        self.arrivals = 0.0
        self.departures = 0.0
        self.tokens = 0.0
        self.last_batch = 0
        self.last_gap_s = 0.0  # time since the previous update (s): the last iteration's measured gap
        self.last_update_s = math.nan
        self.first_update_s = math.nan
        self.present: set[str] = set()
        self.waiting_since_s: dict[str, float] = {}
        self.iteration = 0
        self.running: set[str] = set()
        self.running_ids: list[str] = []  # the running ids at the last update, in batch order
        self.joined: dict[str, int] = {}  # running id -> iteration it joined the batch
        # running id -> when it was first seen here (waiting or running)
        self.started_s: dict[str, float] = {}
        self.lengths: deque[int] = deque(maxlen=LENGTH_SAMPLES)
        self.ordered: list[int] = []  # ``lengths`` kept sorted (one insertion per departure, not a sort)

    @property
    def rate_rps(self) -> float:
        """Requests entering the instance per second (estimate; bias-corrected while younger than a window,
        as an exponential average started from zero underestimates for a while)."""
        age_s = self.last_update_s - self.first_update_s
        if not age_s > 0.0:
            return 0.0
        return self.arrivals / (self.window_s * -math.expm1(-age_s / self.window_s))

    @property
    def output_tokens(self) -> float | None:
        """Expected tokens generated per request on this instance, or None before enough have left."""
        if self.departures < MIN_DEPARTURES:
            return None
        return self.tokens / self.departures

    @property
    def short_decode_tokens(self) -> float | None:
        """The ``SHORT_OUTPUT_QUANTILE`` of the measured decoded lengths (tokens, >= 1), or None before
        ``MIN_DEPARTURES`` requests have left."""
        ordered = self.ordered
        if len(ordered) < MIN_DEPARTURES:
            return None
        return float(max(ordered[int(SHORT_OUTPUT_QUANTILE * (len(ordered) - 1))], 1))

    def update(self, snapshot: BatchSnapshot) -> None:
        """Account for the requests of ``snapshot`` (called once per decode decision)."""
        now_s = snapshot.now_s
        elapsed_s = now_s - self.last_update_s
        self.last_gap_s = elapsed_s if elapsed_s > 0.0 else 0.0
        if elapsed_s > 0.0:  # False for the first update, NaN or a clock going backwards
            fast = math.exp(-elapsed_s / self.window_s)
            slow = math.exp(-elapsed_s / (OUTPUT_WINDOW_FACTOR * self.window_s))
            self.arrivals *= fast
            self.departures *= slow
            self.tokens *= slow
        if math.isfinite(now_s):
            self.last_update_s = now_s
            if math.isnan(self.first_update_s):
                self.first_update_s = now_s
        # The previous iteration's batch produced one token per request.
        self.tokens += self.last_batch
        self.last_batch = len(snapshot.requests)
        self.iteration += 1
        # Hot path: the batch's ids in order; the same list as at the last update (most iterations) is the
        # same set, so the set is built and compared only when the list differs.
        ids = [r.request_id for r in snapshot.requests]
        if ids == self.running_ids:
            running = self.running
        else:
            running = set(ids)
            if running != self.running:
                self._note_lengths(running, now_s)
            self.running_ids = ids
        current = running  # (sets here are replaced, never changed in place: sharing one is safe)
        waiting = snapshot.waiting
        if waiting:
            waiting_ids = [q.request_id for q in waiting]
            current = running.union(waiting_ids)
            since = self.waiting_since_s
            fresh = {rid: since.get(rid, now_s) for rid in waiting_ids}
            self.waiting_since_s = fresh
        elif self.waiting_since_s:
            self.waiting_since_s = {}
        previous = self.present
        if current is not previous and current != previous:
            self.arrivals += len(current - previous)
            self.departures += len(previous - current)
            self.present = current

    def itl_so_far(self, request_id: str, now_s: float) -> tuple[float, int] | None:
        """(seconds since ``request_id`` was first seen here, tokens it has run since joining the batch) for a
        running request, or None for an unknown one: their ratio is its mean ITL so far (its wait for
        admission included), as a client measures it from this instance's side."""
        start = self.started_s.get(request_id)
        if start is None:
            return None
        return now_s - start, self.iteration - self.joined[request_id]

    def _note_lengths(self, running: set[str], now_s: float) -> None:
        """Record when requests join the running batch (iteration, and when they were first seen here: their
        wait for admission counts) and, for those that left it, how many iterations (tokens) they ran."""
        joined = self.joined
        started = self.started_s
        since = self.waiting_since_s
        now = self.iteration
        for rid in running - self.running:
            joined[rid] = now
            started[rid] = since.get(rid, now_s)
        left = self.running - running
        if left:
            lengths = self.lengths
            ordered = self.ordered
            # In id order: a set's order follows string hashes, which differ per process (PYTHONHASHSEED),
            # and which of one iteration's departures the bounded sample evicts first must not.
            for rid in sorted(left):
                started.pop(rid, None)
                start = joined.pop(rid, None)
                if start is not None:
                    if len(lengths) == lengths.maxlen:  # the oldest sample leaves the sorted copy too
                        del ordered[bisect_left(ordered, lengths[0])]
                    lengths.append(now - start)
                    insort(ordered, now - start)
        self.running = running
