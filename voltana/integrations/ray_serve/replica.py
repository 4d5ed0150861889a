"""A Ray Serve replica of one P/D role with voltana on, publishing its state through ``record_routing_stats``.

:class:`EmulatedPDReplica` runs :class:`~voltana.integrations.ray_serve.engine.VoltanaEngine` (the engine
emulator timed by the simulated GPU, clock chosen per iteration by voltana) on the replica's event loop. It
is what the tests and the CPU quick start deploy; real vLLM replicas come from Ray Serve LLM (see
``docs/ray.md``). Handle methods take one dict ``payload``: ``request_id``, ``body`` (the OpenAI request),
``trace_headers`` (W3C), ``voltana_route`` (what the request routers read, see :mod:`.routing`) and, for
decode, ``max_tokens`` and the prefill's ``kv_transfer_params``.

KV transfer is emulated the way the vLLM NIXL protocol works: prefill answers ``kv_transfer_params`` naming
itself and the prompt; a decode replica skips its own prefill only when they match its prompt (else it
prefills locally and counts a KV miss).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ray import serve

from voltana.core.config import VoltanaConfig
from voltana.core.errors import VoltanaError
from voltana.core.types import Phase
from voltana.emulator.engine import EmuRequest
from voltana.emulator.responses import count_prompt_tokens, prompt_key
from voltana.hardware.simulated import performance_model
from voltana.integrations.ray_serve.engine import VoltanaEngine
from voltana.plugins import get_plugin_manager
from voltana.plugins.telemetry import configure_telemetry, telemetry_wanted

log = logging.getLogger("voltana.ray_serve")


class ReplicaStoppedError(VoltanaError, RuntimeError):
    """The replica's engine stopped while a request was running on it."""


def replica_config(config: Mapping[str, Any] | None, role: Phase) -> VoltanaConfig:
    """The voltana config of one replica: ``config`` with ``enabled = true`` and ``engine.role = role``.

    Raises pydantic's ``ValidationError`` on a bad key (the builder validates the same dict first).
    """
    data: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (config or {}).items()}
    data["enabled"] = True
    data.setdefault("engine", {})["role"] = role.value
    return VoltanaConfig(**data)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a Serve replica (unit tests)
        return uuid.uuid4().hex[:8]


class EmulatedPDReplica:
    """One prefill or decode replica (see module docstring). ``config`` is a voltana config dict."""

    def __init__(
        self,
        role: str,
        config: Mapping[str, Any] | None = None,
        *,
        model_name: str = "emulated-model",
        time_scale: float = 1.0,
        budget: Any = None,
    ) -> None:
        self.role = Phase(role)
        self.config = replica_config(config, self.role)
        self.model_name = model_name
        self.instance_id = _replica_id()
        hardware = self.config.hardware
        model = performance_model(hardware.simulated_gpu, hardware.simulated_model)
        hook = get_plugin_manager().hook
        if telemetry_wanted(self.config):
            configure_telemetry(self.config)
        self.engine = VoltanaEngine(
            config=self.config,
            role=self.role,
            instance_id=self.instance_id,
            hook=hook,
            model=model,
            time_scale=time_scale,
        )
        self._started = False
        self._budget = budget  # the Budget deployment's handle (cluster.power_budget_w), or None
        self._budget_call: asyncio.Task[None] | None = None

    def _running_engine(self) -> VoltanaEngine:
        if not self._started:  # the engine loop needs the replica's event loop, which __init__ may not see
            self.engine.start()
            self._started = True
        return self.engine

    async def _run(self, req: EmuRequest, payload: Mapping[str, Any]) -> AsyncIterator[str]:
        """Admit ``req`` and yield its tokens; the request's record is emitted however it ends."""
        engine = self._running_engine()
        engine.admit(req)
        first_token_s: float | None = None
        try:
            while (token := await req.tokens.get()) is not None:
                if first_token_s is None:
                    first_token_s = time.time()
                yield token
        finally:
            if not req.finished:
                engine.abort(req)
            engine.finish(
                req,
                first_token_time_s=first_token_s,
                trace_headers=dict(payload.get("trace_headers") or {}),
                model=self.model_name,
            )
        if req.aborted:
            raise ReplicaStoppedError(f"replica {self.instance_id} stopped during request {req.request_id}")

    async def prefill(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Compute the prompt (one token) and answer the ``kv_transfer_params`` a decode replica needs."""
        body = payload["body"]
        key = prompt_key(body)
        req = EmuRequest(str(payload["request_id"]), key, count_prompt_tokens(body), 1, needs_prefill=True)
        async for _ in self._run(req, payload):
            pass
        return {
            "instance_id": self.instance_id,
            "prompt_tokens": req.prompt_tokens,
            "kv_transfer_params": {
                "do_remote_prefill": True,
                "remote_engine_id": self.instance_id,
                "prompt_crc": zlib.crc32(key.encode()),
            },
        }

    async def generate(self, payload: Mapping[str, Any]) -> AsyncIterator[str]:
        """Stream the output tokens (text pieces) of a request whose prefill ran elsewhere (or here)."""
        body = payload["body"]
        key = prompt_key(body)
        params = payload.get("kv_transfer_params") or {}
        remote = bool(params.get("do_remote_prefill")) and params.get("prompt_crc") == zlib.crc32(
            key.encode()
        )
        req = EmuRequest(
            str(payload["request_id"]),
            key,
            count_prompt_tokens(body),
            int(payload["max_tokens"]),
            needs_prefill=not remote,
        )
        async for token in self._run(req, payload):
            yield token

    async def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve's routing-stats hook: ``{"voltana": <state>}`` (see :mod:`.stats`). With a power budget
        it also reports the state to the ``Budget`` deployment (in the background) and takes its ceiling."""
        stats = self.engine.stats()
        if self._budget is not None and (self._budget_call is None or self._budget_call.done()):
            self._budget_call = asyncio.get_running_loop().create_task(self._report_budget(stats.to_state()))
        return stats.to_routing_stats()

    async def _report_budget(self, state: dict[str, Any]) -> None:
        try:
            answer = await self._budget.report.remote(state, self.engine.pending_prompt_tokens())
        except Exception as exc:  # the coordinator is gone: the lease runs out on its own
            log.warning("power budget: cannot report to the Budget deployment (%s)", exc)
            return
        if answer["ceiling_mhz"] is not None:
            self.set_clock_ceiling(answer["ceiling_mhz"], answer["lease_s"])

    def set_clock_ceiling(self, ceiling_mhz: int | None, lease_s: float) -> None:
        """Hold this replica's clocks at or below ``ceiling_mhz`` (MHz; None lifts it) for ``lease_s``
        seconds; a ceiling not renewed within its lease lapses. Shown as ``clock_ceiling_mhz`` in the
        routing stats."""
        self.engine.set_clock_ceiling(ceiling_mhz, lease_s)

    async def check_health(self) -> None:
        """Ray Serve's health check: fails once the engine loop has died."""
        error = self.engine.loop_error()
        if error is not None:
            raise ReplicaStoppedError(f"engine loop failed: {error!r}")

    async def __del__(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.engine.stop(), timeout=1.0)
