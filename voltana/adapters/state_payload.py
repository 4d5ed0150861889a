"""One instance's ``/voltana/state``: the versioned payload both engine adapters publish, and its publisher.

:class:`InstanceStatePayload` is the one contract between an engine adapter (vLLM, SGLang) and its readers:
the router (``voltana.router.polling`` reads ``sm_clock_mhz`` and ``capture_sizes``), vLLM's ``/metrics``
collector and the Ray Serve integration (``voltana.integrations.ray_serve.stats``). JSON keys are the field
names; ``version`` is :data:`STATE_PAYLOAD_VERSION` and grows when a field changes meaning or is removed
(added fields keep the version: readers ignore unknown keys and default missing ones).

:class:`StatePublisher` writes payloads to a file from its own daemon thread, so the engine thread never
serialises JSON or touches the file system: :meth:`StatePublisher.submit` is one reference store and an event
set (latest wins; a payload not yet written is replaced). With a ``source`` it also polls the source every
``interval_s`` (SGLang's leader scheduler). Files are replaced atomically; an unchanged payload (ignoring
``updated_at_s``) is not rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from voltana.adapters.status import RuntimeStatus

log = logging.getLogger("voltana.adapters")

STATE_PAYLOAD_VERSION = 1
"""Version of :class:`InstanceStatePayload`'s JSON shape."""
PUBLISH_INTERVAL_S = 0.25
"""Default time between two state writes of one instance (s)."""


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
    clock_ceiling_mhz: int | None = None
    """The power-budget ceiling the instance's clock policy is held under (MHz), as ``voltana emulate``
    reports it; None without one (no ``[cluster] power_budget_w`` router, or its lease lapsed). Added in
    version 1 (an added field keeps the version)."""
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
    def from_status(cls, status: RuntimeStatus, *, broken: str = "", **load: Any) -> InstanceStatePayload:
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
            if "queues" in values:
                values["queues"] = {str(k): int(v) for k, v in dict(values["queues"]).items()}
            if "monitor_only" in values:
                values["monitor_only"] = bool(values["monitor_only"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad state payload: {exc}") from exc
        values["version"] = version
        return cls(**values)


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON (a reader never sees half a file). Raises OSError."""
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


class StatePublisher:
    """Writes an instance's latest :class:`InstanceStatePayload` to ``path`` from a daemon thread.

    ``path`` None: publishing is off (every call is a no-op). ``source``: polled every ``interval_s`` on the
    thread. ``after_write``: called on the thread after each write attempt (e.g. flushing a request log), so
    its I/O stays off the caller's thread too. Never raises to the caller; write errors are logged once.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        source: Callable[[], InstanceStatePayload] | None = None,
        after_write: Callable[[], None] | None = None,
        interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.writes = 0
        """Files written so far (tests, benchmarks)."""
        self._source = source
        self._after_write = after_write
        self._pending: InstanceStatePayload | None = None
        self._submitted = 0  # submits so far (caller's thread)
        self._handled = 0  # the submit count the thread had seen when it last took a payload
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_text = ""
        self._last_submit_s = -float("inf")
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="voltana-state", daemon=True)

    def start(self) -> StatePublisher:
        """Start the thread (idempotent); with a ``source``, write its first payload now (caller's thread)."""
        if self.path is not None and not self._thread.is_alive() and not self._stop.is_set():
            if self._source is not None:
                self._write_from_source()  # readers see a state from the start
            self._thread.start()
        return self

    def due(self) -> bool:
        """True when ``interval_s`` passed since the last :meth:`submit` (cheap: build a payload then)."""
        return self.path is not None and time.monotonic() - self._last_submit_s >= self.interval_s

    def submit(self, payload: InstanceStatePayload) -> None:
        """Hand ``payload`` to the thread; returns at once (latest wins)."""
        if self.path is None:
            return
        self._last_submit_s = time.monotonic()
        self._pending = payload
        self._submitted += 1
        self._wake.set()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until what was submitted is written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._handled < self._submitted and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, remove: bool = True) -> None:
        """Write what is pending, stop the thread and (``remove``) delete the file; idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(2.0, 2 * self.interval_s))
        if remove and self.path is not None:
            self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while True:
            if self._source is not None:
                self._write_from_source()
            self._wake.wait(self.interval_s)
            self._wake.clear()
            seen = self._submitted
            payload, self._pending = self._pending, None
            if payload is not None:
                self._write(payload)
            self._handled = seen
            if self._stop.is_set():
                return

    def _write_from_source(self) -> None:
        assert self._source is not None
        try:
            payload = self._source()
        except Exception as exc:
            self._warn(exc)
            return
        self._write(payload)

    def _write(self, payload: InstanceStatePayload) -> None:
        assert self.path is not None
        data = payload.to_json()
        text = json.dumps({k: v for k, v in data.items() if k != "updated_at_s"}, sort_keys=True)
        try:
            if text != self._last_text:
                write_json_atomically(self.path, data)
                self._last_text = text
                self.writes += 1
        except (OSError, TypeError, ValueError) as exc:
            self._warn(exc)
        if self._after_write is not None:
            try:
                self._after_write()
            except Exception as exc:
                self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("voltana: cannot publish instance state to %s: %s", self.path, exc)
