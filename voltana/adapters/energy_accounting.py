"""The instance runtime's energy side: iterations and requests in, apportioned joules out, off the hot path.

The engine thread only *reports* (an iteration's span, a finished request) by appending to an inbox, and tells
when the forward it dispatches began (``dispatching``/``idle``) so the timeline is known. With a measured (or
power-integrated) GPU an :class:`~voltana.hardware.energy.EnergySampler` thread reads the counters on the
device's refresh period, feeds an :class:`~voltana.core.energy_ledger.EnergyLedger` and, from that thread,
emits ``voltana_request_finished`` once a request's energy is settled; learnable iteration energies are queued
back for the engine thread to teach the predictor (predictors are not thread-safe). A simulated GPU has no
refresh period: it is settled inline on the engine thread, exactly (a Python attribute read, no driver call).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from voltana.core.energy_ledger import EnergyLedger, Settlement
from voltana.core.types import BatchSnapshot, EnergySource, RequestRecord

log = logging.getLogger("voltana.runtime")

MIN_BUSY_SHARE = 0.5
"""A window teaches the energy predictor only when iterations fill at least half of it: in a mostly idle
window the busy/idle split rests on the modelled idle power more than on the measurement."""
MIN_WINDOW_PERIODS = 0.5
"""...and only when it is at least half a refresh period long (the first window, a merge after a skipped read
or the flush at close can be shorter)."""

_ITERATION, _FINISHED, _FORGET = 0, 1, 2


@dataclasses.dataclass(frozen=True, slots=True)
class LearnedEnergy:
    """A settled, learnable iteration energy for the predictor of ``snapshot.phase`` (J at ``clock_mhz``)."""

    snapshot: BatchSnapshot
    clock_mhz: int
    energy_j: float


class EnergyAccounting:
    """Apportioned energy of one instance: per iteration, per request, idle; see the module docstring.

    ``group``: the instance's GPU group; ``perf_model``: its performance model (modelled iteration energy
    and idle power; None: time shares); ``emit``: called with each finished :class:`RequestRecord` once its
    energy is settled (from the sampler thread for measured GPUs); ``period_s``: sampling period of a real
    GPU (s, None: the group's refresh period); ``clock``: the runtime's clock (the ledger's timeline).
    """

    def __init__(
        self,
        group: Any,
        perf_model: Any | None,
        emit: Callable[[RequestRecord], None],
        *,
        period_s: float | None = None,
        clock: Callable[[], float],
        name: str = "voltana-energy",
    ) -> None:
        from voltana.hardware.energy import EnergySampler, energy_refresh_s, group_energy_reader

        self._group = group
        self._perf_model = perf_model
        self._emit = emit
        self._clock = clock
        self.synchronous = getattr(group, "vendor", "") == "simulated"  # its counter moves as we tell it
        # a simulated counter is a Python float: read it directly (exact, no driver, the engine thread's cost)
        self._read = group.energy_j if self.synchronous else group_energy_reader(group)
        self.source = self._group_source()
        """Where the joules come from now (refreshed by the sampler thread; read freely on the hot path)."""
        self.period_s = period_s if period_s is not None else energy_refresh_s(group)
        idle_w = float(perf_model.idle_power_w()) if perf_model is not None else 1.0
        self.ledger = EnergyLedger(
            idle_w,
            min_window_s=MIN_WINDOW_PERIODS * self.period_s,
            min_busy_share=MIN_BUSY_SHARE,
        )
        self.learned: deque[LearnedEnergy] = deque()
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._timeline = threading.Lock()
        self._open_since_s: float | None = None
        self._last_end_s: float | None = None
        self._sampler: Any | None = None
        if not self.synchronous:
            if self.period_s <= 0.0:
                self.period_s = 0.1
            self._sampler = EnergySampler(self._read, self.period_s, self._on_sample, clock=clock, name=name)
            self._sampler.start()

    # ----------------------------------------------------------------------------- engine thread (cheap)

    def _group_source(self) -> EnergySource:
        """Where the group's joules come from (it says; a simulated group is ``simulated``)."""
        if self.synchronous:
            return EnergySource.SIMULATED
        source = getattr(self._group, "energy_source", None)
        return EnergySource(source) if source is not None else EnergySource.MEASURED

    @property
    def counter_reads(self) -> int:
        """Counter reads made by the sampler thread so far (0 for a simulated group)."""
        return self._sampler.reads if self._sampler is not None else 0

    def dispatching(self, t_s: float) -> None:
        """A forward starts at ``t_s`` while none is in flight: the timeline is known up to it."""
        if self._sampler is not None:
            with self._timeline:
                self._open_since_s = t_s

    def iteration(
        self, start_s: float, end_s: float, snapshot: BatchSnapshot, clock_mhz: int, busy_after: bool
    ) -> float | None:
        """An iteration ran over ``[start_s, end_s]`` at ``clock_mhz``. Returns its energy (J) when settled
        now (simulated GPU), else None (settled later by the sampler). ``busy_after``: another forward is
        already in flight (it starts at ``end_s`` at the earliest)."""
        if self.synchronous:
            return self._simulated_iteration(start_s, end_s, snapshot, clock_mhz)
        self._inbox.append((_ITERATION, start_s, end_s, snapshot, clock_mhz))
        with self._timeline:
            self._open_since_s = end_s if busy_after else None
        return None

    def request_finished(self, record: RequestRecord) -> RequestRecord | None:
        """``record`` (energy still 0) left the instance; returns it with its energy when settled now."""
        if not self.synchronous:
            self._inbox.append((_FINISHED, record.request_id, record))
            return None
        self.ledger.finish_request(record.request_id, record)
        settled = self._dispatch(self.ledger.advance(self._last_end_s or 0.0), emit=False)
        return settled[0] if settled else None

    def forget(self, request_id: str) -> None:
        """Drop a request's energy account (aborted or reported elsewhere)."""
        if self.synchronous:
            self.ledger.forget_request(request_id)
        else:
            self._inbox.append((_FORGET, request_id))

    def close(self) -> None:
        """Stop the sampler after a last reading; settle and emit what is left (idempotent)."""
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.close()
            self._drain_inbox()
            self._dispatch(self.ledger.flush(self._clock()), emit=True)

    # ------------------------------------------------------------------------------------------ internals

    def _simulated_iteration(
        self, start_s: float, end_s: float, snapshot: BatchSnapshot, clock_mhz: int
    ) -> float | None:
        """Advance the simulated counters by the idle gap and the modelled iteration, then settle inline."""
        from voltana.hardware.simulated import record_iteration, simulated_power_cap_w

        model, group = self._perf_model, self._group
        ledger = self.ledger
        if self._last_end_s is None:
            ledger.add_sample(start_s, self._read())
        elif model is not None and start_s > self._last_end_s:
            idle_s = start_s - self._last_end_s
            for device in group.devices:
                advance = getattr(device, "advance_idle_s", None)
                if advance is not None:
                    advance(idle_s)
        modelled_j = 0.0
        if model is not None:
            cost = _modelled_cost(model, snapshot, clock_mhz, simulated_power_cap_w(group))
            record_iteration(group, cost)
            modelled_j = cost.energy_j
        self._last_end_s = end_s
        ledger.add_iteration(start_s, end_s, snapshot.requests, modelled_j)
        ledger.add_sample(end_s, self._read())
        settlement = ledger.advance(end_s)
        if settlement.requests:
            self._dispatch(settlement, emit=True)
        return settlement.iterations[-1].energy_j if settlement.iterations else None

    def _on_sample(self, t_s: float, joules: float | None) -> None:
        """Sampler thread: take in what the engine reported, add the reading, settle up to the known time."""
        with self._timeline:
            now_s = self._clock()
            known_s = self._open_since_s if self._open_since_s is not None else now_s
        self.source = self._group_source()
        self._drain_inbox()
        self.ledger.add_sample(t_s, joules)
        self._dispatch(self.ledger.advance(min(known_s, now_s)), emit=True)

    def _drain_inbox(self) -> None:
        ledger, inbox, model = self.ledger, self._inbox, self._perf_model
        while inbox:
            event = inbox.popleft()
            kind = event[0]
            if kind == _ITERATION:
                _, start_s, end_s, snapshot, clock_mhz = event
                if model is not None:
                    modelled_j = _modelled_cost(model, snapshot, clock_mhz).energy_j
                else:
                    modelled_j = end_s - start_s  # no model: time shares (idle power 1 W, busy 1 W)
                ledger.add_iteration(start_s, end_s, snapshot.requests, modelled_j, (snapshot, clock_mhz))
            elif kind == _FINISHED:
                ledger.finish_request(event[1], event[2])
            else:
                ledger.forget_request(event[1])

    def _dispatch(self, settlement: Settlement, *, emit: bool) -> list[RequestRecord]:
        """Queue learnable energies for the engine thread; complete (and emit) released request records."""
        if not self.synchronous:
            for settled in settlement.iterations:
                if settled.learnable and settled.payload is not None:
                    snapshot, clock_mhz = settled.payload
                    self.learned.append(LearnedEnergy(snapshot, clock_mhz, settled.energy_j))
        released: list[RequestRecord] = []
        if settlement.requests:
            source = self.source
            for record, energy_j in settlement.requests:
                released.append(dataclasses.replace(record, energy_j=energy_j, energy_source=source))
        if emit:
            for record in released:
                self._emit(record)
        return released


def _modelled_cost(
    model: Any, snapshot: BatchSnapshot, clock_mhz: int, power_cap_w: float | None = None
) -> Any:
    """The performance model's cost of the iteration in ``snapshot`` at ``clock_mhz`` (an IterationCost),
    under a per-GPU ``power_cap_w`` (W; None: TDP), as a simulated GPU with a power limit runs it."""
    return model.cost(
        snapshot.phase,
        snapshot.batch_size,
        snapshot.num_new_tokens,
        snapshot.num_context_tokens,
        clock_mhz,
        power_cap_w=power_cap_w,
    )
