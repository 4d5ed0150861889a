"""The emulator's engine model: continuous batching over iteration times of the simulated GPU.

Engine model: continuous batching. Each iteration is a prefill batch (the waiting queue, up to a token budget)
or one decode step of every running request; it lasts ``PerformanceModel.cost(...).latency_s x time_scale
x slowdown``. Output text is a pure function of the prompt (so an answer can be checked anywhere); prompt
tokens are estimated as characters / 4.

Energy: each iteration's simulated energy is split over its batch with voltana's attribution rule
(:func:`voltana.core.attribution.energy_shares`); a finished request's joules are served at
``GET /voltana/requests/{X-Request-Id}`` (the per-request record the router's ``report_energy`` reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from voltana.core.attribution import energy_shares
from voltana.core.types import Phase, ScheduledRequest
from voltana.emulator.responses import token_text
from voltana.hardware.simulated import PerformanceModel
from voltana.profiler.ceiling_api import MemoryCeiling, clock_under
from voltana.profiler.engine_api import MemoryControl, iteration_json

PREFILL_TOKEN_BUDGET = 8192  # vLLM's default max_num_batched_tokens with chunked prefill
MIN_SLEEP_S = 0.002


@dataclass
class EmuRequest:
    """One request inside an emulated engine."""

    request_id: str
    key: str
    prompt_tokens: int
    max_tokens: int
    needs_prefill: bool
    generated: int = 0
    tokens: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    finished: bool = False
    aborted: bool = False
    energy_j: float = 0.0


@dataclass
class Faults:
    """Injected faults: ``slowdown`` multiplies iteration time; ``error_status`` answers every generation;
    ``poison_prompt``: a request with this prompt makes the engine fail (HTTP 500) and stay dead, as a
    request that crashes vLLM's EngineCore does; ``poll_delay_s`` stalls the monitoring endpoints
    (``/metrics``, ``/v1/loads``, ``/v1/models``, ``/health``, ``/voltana/state``), as a busy engine does."""

    slowdown: float = 1.0
    error_status: int | None = None
    poison_prompt: str | None = None
    poll_delay_s: float = 0.0


class EmulatedEngine:
    """Continuous batching over simulated iteration times."""

    def __init__(
        self,
        model: PerformanceModel,
        clock_mhz: int,
        time_scale: float,
        faults: Faults,
        control: MemoryControl | None = None,
        ceiling: MemoryCeiling | None = None,
    ) -> None:
        self.model = model
        self.clock_mhz = clock_mhz
        self.control = control
        self.ceiling = ceiling
        self.busy_energy_j = 0.0  # simulated joules of every iteration run
        self.busy_sim_s = 0.0  # simulated seconds of those iterations
        self.started_at_s = time.monotonic()
        self.time_scale = time_scale
        self.faults = faults
        self.waiting: deque[EmuRequest] = deque()
        self.running: list[EmuRequest] = []
        self.iterations = 0
        self.busy_s = 0.0
        self._debt_s = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the scheduler loop."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop; every unfinished request ends (its stream closes)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for req in list(self.waiting) + self.running:
            self.abort(req)

    def submit(self, req: EmuRequest) -> None:
        """Queue ``req`` for prefill, or straight into the decode batch when its KV is already here."""
        (self.waiting.append if req.needs_prefill else self.running.append)(req)
        self._wake.set()

    def abort(self, req: EmuRequest) -> None:
        """Drop ``req`` (client gone or engine stopping)."""
        if req.finished:
            return
        req.aborted = req.finished = True
        with contextlib.suppress(ValueError):
            self.waiting.remove(req)
        with contextlib.suppress(ValueError):
            self.running.remove(req)
        req.tokens.put_nowait(None)

    @property
    def kv_tokens(self) -> int:
        """KV tokens held by running requests."""
        return sum(r.prompt_tokens + r.generated for r in self.running)

    def _emit(self, req: EmuRequest) -> None:
        req.tokens.put_nowait(token_text(req.key, req.generated))
        req.generated += 1
        if req.generated >= req.max_tokens:
            req.finished = True
            req.tokens.put_nowait(None)

    async def _run_for(self, latency_s: float) -> None:
        """Let ``latency_s`` of simulated time pass (scaled). Sub-millisecond waits are batched: the event
        loop cannot time them (epoll has 1 ms resolution) and one wake-up per iteration would dominate, so
        the engine yields and keeps a time debt that it sleeps off once it reaches ``MIN_SLEEP_S``."""
        delay_s = latency_s * self.time_scale * self.faults.slowdown
        self.busy_s += delay_s
        self.iterations += 1
        self._debt_s += delay_s
        if self._debt_s < MIN_SLEEP_S:
            await asyncio.sleep(0)
            return
        start = time.monotonic()
        await asyncio.sleep(self._debt_s)
        self._debt_s = max(-MIN_SLEEP_S, self._debt_s - (time.monotonic() - start))

    def _cost(self, phase: Phase, batch_size: int, new_tokens: int, context_tokens: int) -> Any:
        """The simulated GPU's cost of one iteration at the current clock (the pinned one, if pinned),
        recorded for ``GET /voltana/iterations``."""
        pinned = False
        if self.control is not None:
            self.clock_mhz, pinned = self.control.clock_mhz()
            ceiling = self.ceiling.ceiling_mhz() if self.ceiling is not None else None
            if ceiling is not None and not pinned:
                self.clock_mhz = clock_under(self.control.allowed_clocks_mhz(), self.clock_mhz, ceiling)
        cost = self.model.cost(phase, batch_size, new_tokens, context_tokens, self.clock_mhz)
        self.busy_energy_j += cost.energy_j
        self.busy_sim_s += cost.latency_s
        if self.control is not None:
            self.control.ring.append(
                iteration_json(
                    seq=0,
                    t_s=time.time(),
                    phase=phase.value,
                    batch_size=batch_size,
                    new_tokens=new_tokens,
                    context_tokens=context_tokens,
                    clock_mhz=self.clock_mhz,
                    decided_mhz=self.clock_mhz,
                    reason="pinned" if pinned else "static",
                    latency_s=cost.latency_s,
                    energy_j=cost.energy_j,
                )
            )
        return cost

    def energy_joules(self) -> float:
        """Energy drawn since start at wall-clock pace (J): the simulated GPU's iterations plus its idle power
        in between, times ``time_scale``, so that joules per wall second are the simulated watts. With
        ``time_scale`` 0 (no waiting) wall time means nothing: the iterations' simulated joules alone."""
        if self.time_scale <= 0.0:
            return self.busy_energy_j
        elapsed_sim_s = (time.monotonic() - self.started_at_s) / self.time_scale
        idle_s = max(0.0, elapsed_sim_s - self.busy_sim_s)
        return (self.busy_energy_j + self.model.idle_power_w() * idle_s) * self.time_scale

    @staticmethod
    def _attribute(batch: list[EmuRequest], energy_j: float, prefill: bool) -> None:
        """Add each request's share of one iteration's simulated energy (voltana's attribution rule)."""
        scheduled = [
            ScheduledRequest(r.request_id, r.prompt_tokens, 0, 0.0)
            if prefill
            else ScheduledRequest(r.request_id, 1, r.prompt_tokens + r.generated, 0.0)
            for r in batch
        ]
        for req, share_j in zip(batch, energy_shares(scheduled, energy_j), strict=True):
            req.energy_j += share_j

    def iteration_latency_s(self, phase: Phase, batch: list[EmuRequest]) -> float:
        """Simulated duration of one iteration of ``batch`` (s, before ``time_scale``) at the current clock
        (the pinned one, if pinned); each request of ``batch`` gets its share of the iteration's energy.

        A prefill computes every prompt token of ``batch``; a decode step one token per request over its
        context. Subclasses choose the clock here (see ``voltana.integrations.ray_serve.engine``).
        """
        if phase is Phase.PREFILL:
            tokens = sum(r.prompt_tokens for r in batch)
            cost = self._cost(Phase.PREFILL, len(batch), tokens, 0)
        else:
            context = sum(r.prompt_tokens + r.generated for r in batch)
            cost = self._cost(Phase.DECODE, len(batch), len(batch), context)
        self._attribute(batch, cost.energy_j, prefill=phase is Phase.PREFILL)
        return float(cost.latency_s)

    def iteration_done(self) -> None:
        """Called when the iteration timed by :meth:`iteration_latency_s` has run (before tokens go out)."""

    async def _loop(self) -> None:
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
            if self.waiting:
                batch: list[EmuRequest] = []
                tokens = 0
                while self.waiting and (
                    not batch or tokens + self.waiting[0].prompt_tokens <= PREFILL_TOKEN_BUDGET
                ):
                    req = self.waiting.popleft()
                    batch.append(req)
                    tokens += req.prompt_tokens
                await self._run_for(self.iteration_latency_s(Phase.PREFILL, batch))
                self.iteration_done()
                for req in batch:
                    if not req.aborted:
                        self._emit(req)  # the prefill samples the first token
                        if not req.finished:
                            self.running.append(req)
                continue
            batch = list(self.running)
            await self._run_for(self.iteration_latency_s(Phase.DECODE, batch))
            self.iteration_done()
            for req in batch:
                if not req.aborted:
                    self._emit(req)
            self.running = [r for r in self.running if not r.finished]
