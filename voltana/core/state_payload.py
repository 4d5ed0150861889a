"""One instance's ``/voltana/state``: the versioned payload every engine side publishes.

:class:`InstanceStatePayload` is the one contract between an engine (the vLLM and SGLang adapters, the Ray
Serve replicas, the emulator in ``voltana.emulator``) and its readers: the router (``voltana.router.polling``
reads ``sm_clock_mhz``, ``capture_sizes``, ``energy_joules`` with ``updated_at_s`` and ``clock_ceiling_mhz``),
the profiler (``role``, ``capture_sizes``, ``kv_capacity_tokens``), vLLM's ``/metrics`` collector and the Ray
Serve integration (``voltana.integrations.ray_serve.stats``). JSON keys are the field names; ``version`` is
:data:`STATE_PAYLOAD_VERSION` and grows when a field changes meaning or is removed (added fields keep the
version: readers ignore unknown keys and default missing ones).

It lives in core so that every layer that serves or reads a state can build it; the adapters' threaded file
publisher is :class:`voltana.adapters.state_payload.StatePublisher`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from voltana.core.types import EnergySource

STATE_PAYLOAD_VERSION = 1
"""Version of :class:`InstanceStatePayload`'s JSON shape."""


class InstanceStatus(Protocol):
    """What :meth:`InstanceStatePayload.from_status` reads (``voltana.adapters.status.RuntimeStatus``)."""

    @property
    def instance_id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def monitor_only(self) -> bool: ...
    @property
    def monitor_only_reason(self) -> str: ...
    @property
    def sm_clock_mhz(self) -> int | None: ...
    @property
    def clock_ceiling_mhz(self) -> int | None: ...
    @property
    def allowed_clocks_mhz(self) -> tuple[int, ...]: ...
    @property
    def iterations(self) -> int: ...
    @property
    def hook_time_s(self) -> float: ...
    @property
    def energy_source(self) -> EnergySource: ...
    @property
    def energy_j(self) -> float: ...
    @property
    def idle_energy_j(self) -> float: ...


@dataclass(frozen=True, slots=True)
class InstanceStatePayload:
    """One engine instance (one data-parallel rank) as its ``/voltana/state`` shows it.

    Counts are requests or tokens; clocks MHz; energy J (``energy_joules`` and ``idle_energy_joules`` keep the
    names of the ``voltana:*_joules_total`` metrics); times s (``updated_at_s`` is Unix time). Load fields
    an engine does not report are None (SGLang's router reads its own ``/v1/loads`` for them).
    """

    instance_id: str = ""
    engine: int = 0
    """Data-parallel rank of this engine (the ``engine`` label of vLLM's metrics)."""
    role: str = ""
    policy: str = ""
    monitor_only: bool = True
    monitor_only_reason: str = ""
    sm_clock_mhz: int | None = None
    """The SM clock the engine runs at now (MHz); None when unknown."""
    clock_ceiling_mhz: int | None = None
    """The router's power-budget ceiling in force (MHz, ``POST /voltana/ceiling``); None when none."""
    allowed_clocks_mhz: tuple[int, ...] = ()
    """Clocks the engine may run at (ascending MHz); empty when monitor-only or not reported."""
    capture_sizes: tuple[int, ...] = ()
    num_requests_running: int | None = None
    num_requests_waiting: int | None = None
    kv_tokens: int | None = None
    kv_capacity_tokens: int | None = None
    queues: Mapping[str, int] = field(default_factory=dict)
    """Engine queue depths by queue name (SGLang: waiting, bootstrap, inflight, prealloc, transfer)."""
    iterations: int = 0
    hook_seconds: float = 0.0
    """Total time spent in voltana's per-iteration hook (s)."""
    energy_source: str = "unknown"
    energy_joules: float = 0.0
    idle_energy_joules: float = 0.0
    updated_at_s: float = 0.0
    version: int = STATE_PAYLOAD_VERSION

    @property
    def hook_time_per_iteration_s(self) -> float:
        """Mean hook time per iteration (s); 0 before the first iteration."""
        return self.hook_seconds / self.iterations if self.iterations else 0.0

    @classmethod
    def from_status(cls, status: InstanceStatus, *, broken: str = "", **load: Any) -> InstanceStatePayload:
        """The payload of a runtime's :class:`RuntimeStatus`; ``broken`` (a reason) marks a hook that turned
        itself off as monitor-only; ``load`` sets (or overrides) other fields (``engine``, ``capture_sizes``,
        ``num_requests_running`` ...). Stamps ``updated_at_s`` now."""
        values: dict[str, Any] = {
            "instance_id": status.instance_id,
            "role": status.role,
            "policy": status.policy,
            "monitor_only": status.monitor_only or bool(broken),
            "monitor_only_reason": status.monitor_only_reason or broken,
            "sm_clock_mhz": status.sm_clock_mhz,
            "clock_ceiling_mhz": status.clock_ceiling_mhz,
            "allowed_clocks_mhz": tuple(status.allowed_clocks_mhz),
            "iterations": status.iterations,
            "hook_seconds": status.hook_time_s,
            "energy_source": status.energy_source.value,
            "energy_joules": status.energy_j,
            "idle_energy_joules": status.idle_energy_j,
            "updated_at_s": time.time(),
        }
        values.update(load)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict (every field, plus the derived ``hook_time_per_iteration_s``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["capture_sizes"] = list(self.capture_sizes)
        data["allowed_clocks_mhz"] = list(self.allowed_clocks_mhz)
        data["queues"] = dict(self.queues)
        data["hook_time_per_iteration_s"] = self.hook_time_per_iteration_s
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstanceStatePayload:
        """Parse :meth:`to_json`'s dict; unknown keys are ignored, missing ones default.

        Raises:
            ValueError: ``version`` is newer than :data:`STATE_PAYLOAD_VERSION`, or a field's type is wrong.
        """
        version = int(data.get("version", STATE_PAYLOAD_VERSION))
        if version > STATE_PAYLOAD_VERSION:
            raise ValueError(f"state payload version {version} > supported {STATE_PAYLOAD_VERSION}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            if "capture_sizes" in values:
                values["capture_sizes"] = tuple(int(s) for s in values["capture_sizes"])
            if "allowed_clocks_mhz" in values:
                values["allowed_clocks_mhz"] = tuple(int(c) for c in values["allowed_clocks_mhz"])
            if "queues" in values:
                values["queues"] = {str(k): int(v) for k, v in dict(values["queues"]).items()}
            if "monitor_only" in values:
                values["monitor_only"] = bool(values["monitor_only"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad state payload: {exc}") from exc
        values["version"] = version
        return cls(**values)
