"""The emulator's engine model: continuous batching over iteration times of the simulated GPU.

Engine model: continuous batching with the simulator's rules (:mod:`voltana.sim.engine`). Each iteration
is a prefill batch or one decode step of every running request; it lasts
``PerformanceModel.cost(...).latency_s x time_scale x slowdown``. A prefill takes the FIFO waiting queue up
to a token budget and splits the last prompt that does not fit (chunked prefill,
:func:`~voltana.sim.engine.compose_prefill`); a request whose prefill is done (or whose KV cache came from a
prefill instance) joins the running batch FIFO while fewer than the engine's ``max_running`` run and the KV
cache holds every running prompt + output (:func:`~voltana.sim.engine.admit_decode`, limits from
:func:`~voltana.sim.engine.engine_limits`). Prefill iterations go first while prompts wait. Output text is a
pure function of the prompt (so an answer can be checked anywhere); prompt tokens are estimated as
characters / 4.

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
from voltana.core.types import DEFAULT_PREFILL_TOKEN_BUDGET, Phase, ScheduledRequest
from voltana.emulator.responses import token_text
from voltana.hardware.simulated import PerformanceModel
from voltana.profiler.ceiling_api import MemoryCeiling, clock_under
from voltana.profiler.engine_api import MemoryControl, iteration_json
from voltana.sim.engine import EngineLimits, admit_decode, compose_prefill, engine_limits

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
    prefilled: int = 0  # prompt tokens computed so far (chunked prefill)
    chunk: int = 0  # prompt tokens of the prefill iteration being run
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
    """Continuous batching over simulated iteration times, batching as the simulator does (module docstring).

    ``limits`` default to vLLM's for ``model`` (:func:`voltana.sim.engine.engine_limits`);
    ``prefill_token_budget`` is the prompt tokens of one prefill iteration (vLLM's
    ``max_num_batched_tokens``).
    """

    def __init__(
        self,
        model: PerformanceModel,
        clock_mhz: int,
        time_scale: float,
        faults: Faults,
        control: MemoryControl | None = None,
        ceiling: MemoryCeiling | None = None,
        limits: EngineLimits | None = None,
        prefill_token_budget: int = DEFAULT_PREFILL_TOKEN_BUDGET,
    ) -> None:
        self.model = model
        self.limits = limits if limits is not None else engine_limits("vllm", model)
        self.prefill_token_budget = prefill_token_budget
        self.clock_mhz = clock_mhz
        self.control = control
        self.ceiling = ceiling
        self.busy_energy_j = 0.0  # simulated joules of every iteration run
        self.busy_sim_s = 0.0  # simulated seconds of those iterations
        self.started_at_s = time.monotonic()
        self.time_scale = time_scale
        self.faults = faults
        self.waiting: deque[EmuRequest] = deque()  # prefill queue
        self.ready: deque[EmuRequest] = deque()  # KV here, waiting for a running slot (decode admission)
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
        for req in [*self.waiting, *self.ready, *self.running]:
            self.abort(req)

    def submit(self, req: EmuRequest) -> None:
        """Queue ``req`` for prefill, or for decode admission when its KV is already here."""
        (self.waiting.append if req.needs_prefill else self.ready.append)(req)
        self._wake.set()

    def abort(self, req: EmuRequest) -> None:
        """Drop ``req`` (client gone or engine stopping)."""
        if req.finished:
            return
        req.aborted = req.finished = True
        with contextlib.suppress(ValueError):
            self.waiting.remove(req)
        with contextlib.suppress(ValueError):
            self.ready.remove(req)
        with contextlib.suppress(ValueError):
            self.running.remove(req)
        req.tokens.put_nowait(None)

    @property
    def num_waiting(self) -> int:
        """Requests not running: waiting for prefill or for decode admission."""
        return len(self.waiting) + len(self.ready)

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
        return self.busy_energy_j * self.time_scale + self.idle_energy_joules()

    def idle_energy_joules(self) -> float:
        """The part of :meth:`energy_joules` drawn between iterations (J): the simulated GPU's idle power over
        the wall time no iteration ran, times ``time_scale``; 0 with ``time_scale`` 0 (no wall time)."""
        if self.time_scale <= 0.0:
            return 0.0
        elapsed_sim_s = (time.monotonic() - self.started_at_s) / self.time_scale
        idle_s = max(0.0, elapsed_sim_s - self.busy_sim_s)
        return self.model.idle_power_w() * idle_s * self.time_scale

    @staticmethod
    def _attribute(batch: list[EmuRequest], energy_j: float, prefill: bool) -> None:
        """Add each request's share of one iteration's simulated energy (voltana's attribution rule)."""
        scheduled = [
            ScheduledRequest(r.request_id, r.chunk, r.prefilled, 0.0)
            if prefill
            else ScheduledRequest(r.request_id, 1, r.prompt_tokens + r.generated, 0.0)
            for r in batch
        ]
        for req, share_j in zip(batch, energy_shares(scheduled, energy_j), strict=True):
            req.energy_j += share_j

    def iteration_latency_s(self, phase: Phase, batch: list[EmuRequest]) -> float:
        """Simulated duration of one iteration of ``batch`` (s, before ``time_scale``) at the current clock
        (the pinned one, if pinned); each request of ``batch`` gets its share of the iteration's energy.

        A prefill computes each request's ``chunk`` of prompt tokens over its ``prefilled`` ones; a decode
        step one token per request over its context. Subclasses choose the clock here (see
        ``voltana.integrations.ray_serve.engine``).
        """
        if phase is Phase.PREFILL:
            tokens = sum(r.chunk for r in batch)
            cost = self._cost(Phase.PREFILL, len(batch), tokens, sum(r.prefilled for r in batch))
        else:
            context = sum(r.prompt_tokens + r.generated for r in batch)
            cost = self._cost(Phase.DECODE, len(batch), len(batch), context)
        self._attribute(batch, cost.energy_j, prefill=phase is Phase.PREFILL)
        return float(cost.latency_s)

    def iteration_done(self) -> None:
        """Called when the iteration timed by :meth:`iteration_latency_s` has run (before tokens go out)."""

    def _prefill_batch(self) -> list[EmuRequest]:
        """The next prefill iteration's requests (each with its ``chunk``), leaving a split head queued."""
        waiting = self.waiting
        batch: list[EmuRequest] = []
        for chunk in compose_prefill(
            (r.prompt_tokens - r.prefilled for r in waiting), self.prefill_token_budget
        ):
            req = waiting[0]
            req.chunk = chunk
            batch.append(req)
            if req.prefilled + chunk == req.prompt_tokens:
                waiting.popleft()
        return batch

    def _admit(self) -> None:
        """Move requests from the decode admission queue into the running batch (FIFO, running cap, KV).
        A request over the whole KV cache runs alone rather than wait forever (the emulator's protocol checks
        bound prompts by ``max_model_len``; the simulator refuses such requests at arrival)."""
        ready = self.ready
        if not ready:
            return
        limits = self.limits
        count = admit_decode(
            (r.prompt_tokens + r.max_tokens for r in ready),
            len(self.running),
            sum(r.prompt_tokens + r.max_tokens for r in self.running),
            limits.kv_capacity_tokens,
            limits.max_running,
        )
        if count == 0 and not self.running:
            count = 1
        for _ in range(count):
            self.running.append(ready.popleft())

    async def _loop(self) -> None:
        while True:
            if not self.waiting and not self.ready and not self.running:
                self._wake.clear()
                await self._wake.wait()
            if self.waiting:
                batch = self._prefill_batch()
                await self._run_for(self.iteration_latency_s(Phase.PREFILL, batch))
                self.iteration_done()
                for req in batch:
                    req.prefilled += req.chunk
                    if not req.aborted and req.prefilled >= req.prompt_tokens:
                        self._emit(req)  # the prefill's last chunk samples the first token
                        if not req.finished:
                            self.ready.append(req)
                continue
            self._admit()
            batch = list(self.running)
            await self._run_for(self.iteration_latency_s(Phase.DECODE, batch))
            self.iteration_done()
            for req in batch:
                if not req.aborted:
                    self._emit(req)
            self.running = [r for r in self.running if not r.finished]
