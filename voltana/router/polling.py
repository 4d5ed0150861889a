"""Background polling of every instance: load (vLLM ``/metrics`` or SGLang ``/v1/loads``), served models,
voltana's own state (``GET /voltana/state`` when the adapter exposes it), and health probes of ejected ones.

Polls go through an aiohttp session of their own (the router's one HTTP client, see
``benchmarks/bench_http_client.py``), whose timeout is the poll's: a poll that times out after connecting
marks the instance slow, one that cannot connect marks it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp

from voltana.router.instances import Instance, InstanceRegistry
from voltana.router.load_parsing import LoadReport, parse_sglang_loads, parse_vllm_metrics

log = logging.getLogger("voltana.router")

Backend = Literal["vllm", "sglang"]
SGLANG_LOADS_PATH = "/v1/loads?include=core,memory,disagg,queues"
VOLTANA_STATE_PATH = "/voltana/state"
MODELS_REFRESH_POLLS = 20


async def fetch_load(client: aiohttp.ClientSession, inst: Instance, backend: Backend) -> LoadReport:
    """One load poll; raises ``aiohttp.ClientError``, ``TimeoutError`` or ``ValueError`` on failure."""
    if backend == "vllm":
        async with client.get(inst.url + "/metrics", raise_for_status=True) as response:
            return parse_vllm_metrics(await response.text())
    async with client.get(inst.url + SGLANG_LOADS_PATH, raise_for_status=True) as response:
        return parse_sglang_loads(await response.json(content_type=None))


def model_cards(payload: Any) -> dict[str, dict[str, Any]]:
    """The entries of an OpenAI ``/v1/models`` answer, by model id."""
    entries = payload.get("data", []) if isinstance(payload, dict) else []
    return {e["id"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)}


def parse_models(payload: Any) -> dict[str, int | None]:
    """``{model id: max_model_len or None}`` from an OpenAI ``/v1/models`` answer."""
    found: dict[str, int | None] = {}
    for model, entry in model_cards(payload).items():
        max_len = entry.get("max_model_len")
        found[model] = max_len if isinstance(max_len, int) and max_len > 0 else None
    return found


class Poller:
    """Polls every instance every ``interval_s``; ``eject_after_failures`` failed polls in a row eject."""

    def __init__(
        self, registry: InstanceRegistry, client: aiohttp.ClientSession, backend: Backend, interval_s: float
    ) -> None:
        self.registry = registry
        self.client = client
        self.backend = backend
        self.interval_s = interval_s
        self.polls = 0
        self.after_poll: Callable[[], Awaitable[None]] | None = None
        """Awaited after every round of polls (the power budget's coordinator); must not raise."""
        self._voltana_state: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="voltana-router-poller")

    async def stop(self) -> None:
        """Stop the loop and wait for it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.poll_all()
            if self.after_poll is not None:
                await self.after_poll()
            await asyncio.sleep(self.interval_s)

    async def poll_all(self) -> None:
        """Poll every instance once, concurrently."""
        refresh_models = self.polls % MODELS_REFRESH_POLLS == 0
        await asyncio.gather(*(self.poll_one(inst, refresh_models) for inst in self.registry))
        self.polls += 1

    async def poll_one(self, inst: Instance, refresh_models: bool = False) -> None:
        """Poll one instance: a health probe while ejected, load (+ models, voltana state) otherwise."""
        if not inst.admitted:
            await self._probe(inst)
            if not inst.admitted:
                return
            refresh_models = True
        try:
            report = await fetch_load(self.client, inst, self.backend)
            if refresh_models or not inst.models:
                async with self.client.get(inst.url + "/v1/models", raise_for_status=True) as response:
                    payload = await response.json(content_type=None)
                inst.models = parse_models(payload)
                inst.model_cards = model_cards(payload)
            if self._voltana_state.get(inst.instance_id, True):
                await self._fetch_voltana_state(inst)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            slow = isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError)
            self.registry.record_poll(inst, None, f"poll failed: {type(exc).__name__}: {exc}", slow=slow)
            return
        self.registry.record_poll(inst, report)

    async def _probe(self, inst: Instance) -> None:
        try:
            async with self.client.get(inst.url + "/health") as response:
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self.registry.record_probe(inst, ok)

    async def _fetch_voltana_state(self, inst: Instance) -> None:
        async with self.client.get(inst.url + VOLTANA_STATE_PATH) as response:
            if response.status == 404:
                self._voltana_state[inst.instance_id] = False  # this engine has no voltana state endpoint
                return
            response.raise_for_status()
            state = await response.json(content_type=None)
        clock = state.get("sm_clock_mhz") if isinstance(state, dict) else None
        sizes = state.get("capture_sizes") if isinstance(state, dict) else None
        inst.sm_clock_mhz = clock if isinstance(clock, int) else None
        if isinstance(sizes, list) and all(isinstance(s, int) for s in sizes):
            inst.capture_sizes = tuple(sorted(sizes))
        energy = state.get("energy_joules") if isinstance(state, dict) else None
        if isinstance(energy, int | float) and not isinstance(energy, bool):
            # The engine's own time of the reading (the payload's updated_at_s), else now: a poll's network
            # delay must not show up as power.
            stamp = state.get("updated_at_s")
            at_s = (
                float(stamp)
                if isinstance(stamp, int | float) and not isinstance(stamp, bool)
                else time.time()
            )
            inst.energy_j, inst.energy_at_s = float(energy), at_s
        ceiling = state.get("clock_ceiling_mhz") if isinstance(state, dict) else None
        inst.clock_ceiling_mhz = ceiling if isinstance(ceiling, int) else None
        inst.touch()
