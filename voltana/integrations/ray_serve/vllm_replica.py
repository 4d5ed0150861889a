"""Ray Serve LLM's vLLM replicas with voltana: their state in ``record_routing_stats``, their configs.

Ray Serve LLM runs vLLM in the replica process: ``AsyncEngineArgs`` loads vLLM's general plugins there, so
voltana's plugin (enabled) creates the instance-state directory in the replica and exports it
(``_VOLTANA_VLLM_STATE_DIR``, :mod:`voltana.adapters.vllm.state`) before ``AsyncLLM`` spawns its EngineCore,
whose scheduler hook then publishes an ``engine-<rank>.json``
(:class:`~voltana.core.state_payload.InstanceStatePayload`) there. :class:`VoltanaRoutingStatsMixin`
adds that state to what the replica's ``record_routing_stats()`` returns, under ``"voltana"``, next to Ray
Serve LLM's own stats, so the voltana request routers see the engine's clock, capture sizes and load.

:func:`voltana_llm_config` turns a Ray Serve LLM ``LLMConfig`` (as a dict) into one with voltana on: the
voltana config as ``VOLTANA_*`` environment variables of the replica (``runtime_env``; the engine role set),
the deployment behind voltana's request router, and the replica count.

No Ray import here (the Ray Serve LLM classes are in :mod:`.llm_server`): this part is tested on its own.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from voltana.adapters.vllm.state import read_states, state_dir
from voltana.core.config import ENV_PREFIX
from voltana.core.state_payload import InstanceStatePayload
from voltana.core.types import Phase
from voltana.integrations.ray_serve.stats import ROUTING_STATS_KEY

ROUTERS = {
    Phase.PREFILL: "voltana.integrations.ray_serve.routing.VoltanaPrefillRouter",
    Phase.DECODE: "voltana.integrations.ray_serve.routing.VoltanaDecodeRouter",
}
_SUMMED = ("num_requests_running", "num_requests_waiting", "kv_tokens", "kv_capacity_tokens")
_ADDED = ("iterations", "hook_seconds", "energy_joules", "idle_energy_joules")


def _combined(payloads: list[InstanceStatePayload]) -> InstanceStatePayload:
    """One replica's engines (data-parallel ranks in one process) as one instance: identity, clock and
    capture sizes of the lowest rank; loads, iterations and energy summed; the newest ``updated_at_s``."""
    first, rest = payloads[0], payloads[1:]
    if not rest:
        return first
    known = {f.name for f in fields(InstanceStatePayload)}
    values: dict[str, Any] = {}
    for name in _SUMMED:
        parts = [getattr(p, name) for p in payloads if getattr(p, name) is not None]
        values[name] = sum(parts) if parts else None
    for name in _ADDED:
        values[name] = sum(getattr(p, name) for p in payloads)
    values["updated_at_s"] = max(p.updated_at_s for p in payloads)
    return replace(first, **{k: v for k, v in values.items() if k in known})


def replica_state(directory: Path | None = None) -> dict[str, Any] | None:
    """This process's vLLM engine state as ``/voltana/state``'s JSON, or None when voltana publishes none
    (not enabled, engine not started yet). ``directory``: the state directory (default: this process's,
    ``_VOLTANA_VLLM_STATE_DIR``). No age limit: the directory belongs to this replica alone and an idle
    engine's last state stays true (the routers judge the age of load themselves). Blocking file reads."""
    directory = directory if directory is not None else state_dir()
    if directory is None:
        return None
    payloads = []
    for state in read_states(directory, max_age_s=None):
        try:
            payloads.append(InstanceStatePayload.from_json(state))
        except (TypeError, ValueError):
            continue  # a file of a newer voltana, or damaged: not this replica's state
    if not payloads:
        return None
    return _combined(sorted(payloads, key=lambda p: p.engine)).to_json()


class VoltanaRoutingStatsMixin:
    """Adds voltana's engine state to a Ray Serve LLM server's ``record_routing_stats()``.

    Put it before the server class (``class S(VoltanaRoutingStatsMixin, LLMServer)``): the result is the
    base class's stats (Ray Serve LLM's own, e.g. the KV-events endpoint) plus ``{"voltana": state}`` when
    the engine published one (:func:`replica_state`, read in a worker thread, off the replica's loop).
    """

    voltana_state_dir: Path | None = None
    """The state directory to read (None: this process's)."""

    async def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve's routing-stats hook (polled by the controller every
        ``request_routing_stats_period_s``): the base class's stats plus voltana's."""
        base: Any = super()
        stats = dict(await base.record_routing_stats() or {})
        state = await asyncio.to_thread(replica_state, self.voltana_state_dir)
        if state is not None:
            stats[ROUTING_STATS_KEY] = state
        return stats


def config_env(config: Mapping[str, Any]) -> dict[str, str]:
    """A voltana config dict as ``VOLTANA_*`` environment variables (one per top-level key; sections as
    JSON, which voltana's settings parse), what ``load_config()`` in the replica's engine reads back."""
    return {
        f"{ENV_PREFIX}{key.upper()}": value if isinstance(value, str) else json.dumps(value)
        for key, value in config.items()
    }


def voltana_llm_config(
    llm_config: Mapping[str, Any],
    phase: Phase,
    role_config: Mapping[str, Any],
    *,
    num_replicas: int | None,
    router_kwargs: Mapping[str, Any],
    routing_stats_period_s: float,
) -> dict[str, Any]:
    """``llm_config`` (a Ray Serve LLM ``LLMConfig`` as a dict, unchanged) with voltana on for ``phase``:

    - ``runtime_env.env_vars``: the voltana config (``role_config``, with ``enabled`` and ``engine.role``
      set) as ``VOLTANA_*`` variables, over the config's own variables of the same names;
    - ``deployment_config.request_router_config``: voltana's router of ``phase`` with ``router_kwargs``,
      stats polled every ``routing_stats_period_s``;
    - ``deployment_config.num_replicas`` = ``num_replicas`` (None: the config's own replica settings).

    Raises ``ValueError`` (one line) when the config sets its own request router, or both
    ``num_replicas`` and an ``autoscaling_config``.
    """
    result = copy.deepcopy(dict(llm_config))
    voltana = {k: dict(v) if isinstance(v, Mapping) else v for k, v in role_config.items()}
    voltana["enabled"] = True
    voltana.setdefault("engine", {})["role"] = phase.value
    runtime_env = dict(result.get("runtime_env") or {})
    runtime_env["env_vars"] = {**dict(runtime_env.get("env_vars") or {}), **config_env(voltana)}
    result["runtime_env"] = runtime_env
    deployment = dict(result.get("deployment_config") or {})
    if deployment.get("request_router_config"):
        raise ValueError(f"{phase.value} LLMConfig sets its own request_router_config; voltana sets it")
    deployment["request_router_config"] = {
        "request_router_class": ROUTERS[phase],
        "request_router_kwargs": dict(router_kwargs),
        "request_routing_stats_period_s": routing_stats_period_s,
    }
    if num_replicas is not None:
        if "autoscaling_config" in deployment:
            raise ValueError(f"{phase.value}: set num_{phase.value} or the LLMConfig's autoscaling_config")
        deployment["num_replicas"] = num_replicas
    result["deployment_config"] = deployment
    return result
