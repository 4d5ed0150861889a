"""Apportioning a GPU energy counter's refresh intervals to iterations, requests and idle time.

A vendor counter is only meaningful over its refresh period (NVML refreshes about every 100 ms, while an
iteration takes 5-50 ms), so per-iteration energy is not read, it is *apportioned*: each interval between two
counter samples ``[a, b]`` with ``E`` joules is split over what ran in it,

- every iteration overlapping it, with weight ``modelled_j * overlap_s / duration_s`` (its modelled energy,
  spread evenly over the time it really ran: its time and modelled power share), and
- the idle time in it (not covered by any iteration), with weight ``idle_s * idle_power_w``,

in proportion to the weights, so the parts sum to ``E`` exactly: nothing is lost, the idle part is the
instance's idle energy. An iteration's energy is settled once a sample at or after its end is apportioned; its
requests then get its energy by :func:`voltana.core.attribution.energy_shares`. A finished request is
released (with its energy) once every iteration reported before it finished is settled.

Resolution: one counter refresh period. A single iteration's figure is a modelled share of a measured window
(right in total, modelled in its split); a request that runs for many periods is accurate to about
``period / duration``. An iteration is *learnable* (fit to teach the energy predictor) only when every window
it touched was at least ``min_window_s`` long and at least ``min_busy_share`` busy: a short window (the first,
a flush at close) or a mostly idle one says little about the iteration.

Single-threaded: one owner (the sampler thread, or the engine thread for a simulated GPU) calls every method.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from voltana.core.attribution import energy_shares
from voltana.core.types import ScheduledRequest


@dataclass(slots=True)
class _Iteration:
    seq: int
    start_s: float
    end_s: float
    requests: Sequence[ScheduledRequest]
    modelled_j: float
    payload: Any
    energy_j: float = 0.0
    learnable: bool = True


@dataclass(slots=True)
class SettledIteration:
    """An iteration whose energy is final: ``payload`` as given to :meth:`EnergyLedger.add_iteration`."""

    payload: Any
    energy_j: float
    learnable: bool


@dataclass(slots=True)
class Settlement:
    """What one :meth:`EnergyLedger.advance` settled: iterations, and finished requests with their joules."""

    iterations: list[SettledIteration] = field(default_factory=list)
    requests: list[tuple[Any, float]] = field(default_factory=list)


class EnergyLedger:
    """Splits counter intervals over iterations (then requests) and idle time; see the module docstring.

    ``idle_power_w``: modelled power of the idle instance (all its GPUs, W); 0 gives idle time no energy
    unless nothing ran in the interval. Invariant: ``total_j == idle_j + attributed_j + open_j`` where
    ``attributed_j`` is the energy of settled iterations and ``open_j`` that of iterations still open.
    """

    def __init__(
        self, idle_power_w: float, *, min_window_s: float = 0.0, min_busy_share: float = 0.5
    ) -> None:
        self.idle_power_w = max(0.0, idle_power_w)
        self.min_window_s = min_window_s
        self.min_busy_share = min_busy_share
        self.total_j = 0.0
        """Counter energy apportioned so far (J): the delta between the first and last processed sample."""
        self.idle_j = 0.0
        """The part of ``total_j`` that fell on idle time (J)."""
        self.attributed_j = 0.0
        """Energy of settled iterations (J); their requests' shares sum to it."""
        self.unclaimed_j = 0.0
        """Settled request energy of requests forgotten (aborted) before they finished (J)."""
        self._open: deque[_Iteration] = deque()
        self._samples: deque[tuple[float, float]] = deque()
        self._last: tuple[float, float] | None = None
        self._seq = 0
        self._settled_seq = 0
        self._accounts: dict[str, float] = {}
        self._finished: deque[tuple[int, str, Any]] = deque()

    # -------------------------------------------------------------------------------------------- input

    def add_iteration(
        self,
        start_s: float,
        end_s: float,
        requests: Sequence[ScheduledRequest],
        modelled_j: float,
        payload: Any = None,
    ) -> None:
        """An iteration ran over ``[start_s, end_s]`` (s, the samples' clock); ``modelled_j`` >= 0 is its
        modelled energy (only its ratio to the others and to idle power matters)."""
        self._seq += 1
        self._open.append(
            _Iteration(self._seq, start_s, max(start_s, end_s), requests, max(0.0, modelled_j), payload)
        )

    def finish_request(self, request_id: str, payload: Any) -> None:
        """``request_id`` finished: release ``payload`` with its joules once its iterations are settled."""
        self._finished.append((self._seq, request_id, payload))

    def forget_request(self, request_id: str) -> None:
        """Drop a request's account (aborted or reported elsewhere); its settled joules become unclaimed."""
        self.unclaimed_j += self._accounts.pop(request_id, 0.0)

    def add_sample(self, t_s: float, cumulative_j: float | None) -> None:
        """A counter reading (cumulative J) taken at ``t_s``; None (unreadable) is skipped, so the next good
        reading closes one longer interval and no energy is lost."""
        if cumulative_j is not None:
            self._samples.append((t_s, cumulative_j))

    # ------------------------------------------------------------------------------------------ settling

    def advance(self, known_until_s: float) -> Settlement:
        """Apportion every queued sample taken at or before ``known_until_s`` (the time up to which every
        iteration has been reported); returns what got settled."""
        settlement = Settlement()
        samples = self._samples
        while samples and samples[0][0] <= known_until_s:
            t_s, cumulative_j = samples.popleft()
            if self._last is None:
                self._last = (t_s, cumulative_j)
                continue
            a, before_j = self._last
            if t_s < a:
                continue
            energy_j = cumulative_j - before_j
            self._last = (t_s, cumulative_j)
            self._apportion(a, t_s, max(0.0, energy_j), settlement)
        self._release(settlement)
        return settlement

    def flush(self, end_s: float) -> Settlement:
        """Settle everything up to ``end_s`` (shutdown): iterations still open keep what they got."""
        settlement = self.advance(end_s)
        while self._open:
            self._settle(self._open.popleft(), settlement)
        self._release(settlement)
        return settlement

    @property
    def open_j(self) -> float:
        """Energy already apportioned to iterations not yet settled (J)."""
        return sum(it.energy_j for it in self._open)

    def _apportion(self, a: float, b: float, energy_j: float, settlement: Settlement) -> None:
        self.total_j += energy_j
        span_s = b - a
        parts: list[tuple[_Iteration, float]] = []
        busy_s = 0.0
        weight_total = 0.0
        for it in self._open:
            if it.start_s >= b:
                break
            duration_s = it.end_s - it.start_s
            if duration_s <= 0.0:
                if a < it.end_s <= b:
                    parts.append((it, it.modelled_j))
                    weight_total += it.modelled_j
                continue
            overlap_s = min(it.end_s, b) - max(it.start_s, a)
            if overlap_s <= 0.0:
                continue
            busy_s += overlap_s
            weight = it.modelled_j * overlap_s / duration_s
            parts.append((it, weight))
            weight_total += weight
        idle_weight = max(0.0, span_s - busy_s) * self.idle_power_w
        weight_total += idle_weight
        meaningful = span_s >= self.min_window_s and span_s > 0 and busy_s >= self.min_busy_share * span_s
        if weight_total <= 0.0:
            self.idle_j += energy_j
        else:
            scale = energy_j / weight_total
            given = 0.0
            for it, weight in parts:
                share = weight * scale
                it.energy_j += share
                given += share
                it.learnable = it.learnable and meaningful
            self.idle_j += energy_j - given  # the idle part, carrying the rounding: the parts sum to energy_j
        while self._open and self._open[0].end_s <= b:
            self._settle(self._open.popleft(), settlement)

    def _settle(self, it: _Iteration, settlement: Settlement) -> None:
        self._settled_seq = it.seq
        self.attributed_j += it.energy_j
        accounts = self._accounts
        for request, share_j in zip(it.requests, energy_shares(it.requests, it.energy_j), strict=True):
            request_id = request.request_id
            accounts[request_id] = accounts.get(request_id, 0.0) + share_j
        settlement.iterations.append(SettledIteration(it.payload, it.energy_j, it.learnable))

    def _release(self, settlement: Settlement) -> None:
        finished = self._finished
        while finished and finished[0][0] <= self._settled_seq:
            _, request_id, payload = finished.popleft()
            settlement.requests.append((payload, self._accounts.pop(request_id, 0.0)))
