"""The router's live picture of its engine instances: in-flight counts, polled load, health, draining.

An instance is *admitted* (routable) unless ejected (too many consecutive failures) or draining. An ejected
instance sits out a quarantine that doubles with every ejection (``readmit_backoff_s`` x 2^k, at most
``MAX_QUARANTINE_S``), then needs ``readmit_after_successes`` healthy probes; once back it is on probation:
one more failure ejects it again (a circuit breaker's half-open state), its first success clears its record.

The state a routing policy sees (:class:`InstanceState`) combines what the router knows exactly (its own
in-flight requests) with the last poll (load from other clients, KV usage), and drops the polled part once
it is older than ``stale_after_s``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from voltana.core.types import InstanceState, Phase
from voltana.router.load_parsing import LoadReport

log = logging.getLogger("voltana.router")
MAX_QUARANTINE_S = 60.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One configured instance: ``url``, and for SGLang prefill its bootstrap port."""

    url: str
    bootstrap_port: int | None = None

    @property
    def host(self) -> str:
        """Host name of ``url`` (what SGLang calls the bootstrap host)."""
        return urlsplit(self.url).hostname or ""


def parse_endpoint(text: str, default_bootstrap_port: int | None = None) -> Endpoint:
    """``"http://h:30000"`` or ``"http://h:30000 8999"`` (SGLang prefill with its bootstrap port)."""
    parts = text.split()
    if not parts or len(parts) > 2:
        raise ValueError(f"instance {text!r}: expected 'URL' or 'URL BOOTSTRAP_PORT'")
    url = parts[0].rstrip("/")
    split = urlsplit(url)
    if split.scheme not in {"http", "https"} or not split.hostname:
        raise ValueError(f"instance {text!r}: URL must look like http://host:port")
    port = default_bootstrap_port
    if len(parts) == 2:
        if not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
            raise ValueError(f"instance {text!r}: bootstrap port must be 1-65535")
        port = int(parts[1])
    return Endpoint(url, port)


@dataclass(slots=True)
class Instance:
    """Mutable router-side record of one engine instance (single event loop: no locks)."""

    instance_id: str
    phase: Phase
    endpoint: Endpoint
    inflight: int = 0
    pending_prompt_tokens: int = 0
    admitted: bool = True
    draining: bool = False
    consecutive_failures: int = 0
    poll_failures: int = 0
    probe_successes: int = 0
    ejections: int = 0
    quarantine_until_s: float = 0.0
    report: LoadReport | None = None
    inflight_at_poll: int = 0
    polled_at_s: float = 0.0
    sm_clock_mhz: int | None = None
    capture_sizes: tuple[int, ...] = ()
    energy_j: float | None = None
    """Cumulative energy in its voltana state (J; None: unreported), read at ``energy_at_s`` (wall clock)."""
    energy_at_s: float = 0.0
    clock_ceiling_mhz: int | None = None
    """The power-budget ceiling the instance reports in force (MHz)."""
    models: dict[str, int | None] = field(default_factory=dict)
    model_cards: dict[str, dict[str, object]] = field(default_factory=dict)
    """The engine's own ``/v1/models`` entries (``root``, ``parent``, ``permission`` ...), by model id."""
    _view: InstanceState | None = None
    _view_fresh: bool = False

    @property
    def url(self) -> str:
        """Base URL (no trailing slash)."""
        return self.endpoint.url

    def touch(self) -> None:
        """Invalidate the cached policy view (after any change)."""
        self._view = None

    def view(self, now_s: float, stale_after_s: float) -> InstanceState:
        """What a routing policy sees; cached until the next change or until the poll goes stale."""
        fresh = self.report is not None and now_s - self.polled_at_s <= stale_after_s
        if self._view is not None and fresh == self._view_fresh:
            return self._view
        running, waiting, kv, capacity = self.inflight, 0, 0, 0
        if self.report is not None:
            capacity = self.report.kv_capacity_tokens
            if fresh:
                external = max(0, self.report.num_running - self.inflight_at_poll)
                running = self.inflight + external
                waiting = self.report.num_waiting
                kv = self.report.kv_tokens
        self._view = InstanceState(
            instance_id=self.instance_id,
            phase=self.phase,
            url=self.url,
            num_running=running,
            num_waiting=waiting,
            kv_tokens=kv,
            kv_capacity_tokens=capacity,
            sm_clock_mhz=self.sm_clock_mhz,
            capture_sizes=self.capture_sizes,
            healthy=self.admitted,
            updated_at_s=self.polled_at_s,
            pending_prompt_tokens=self.pending_prompt_tokens,
        )
        self._view_fresh = fresh
        return self._view


class InstanceRegistry:
    """All instances by phase, with ejection and re-admission bookkeeping."""

    def __init__(
        self,
        prefill: list[Endpoint],
        decode: list[Endpoint],
        *,
        eject_after_failures: int = 3,
        readmit_after_successes: int = 2,
        stale_after_s: float = 2.0,
        max_inflight_per_instance: int = 256,
        readmit_backoff_s: float = 1.0,
    ) -> None:
        self.readmit_backoff_s = readmit_backoff_s
        self.eject_after_failures = eject_after_failures
        self.readmit_after_successes = readmit_after_successes
        self.stale_after_s = stale_after_s
        self.max_inflight_per_instance = max_inflight_per_instance
        self.by_id: dict[str, Instance] = {}
        self.by_phase: dict[Phase, list[Instance]] = {Phase.PREFILL: [], Phase.DECODE: []}
        for phase, endpoints in ((Phase.PREFILL, prefill), (Phase.DECODE, decode)):
            for index, endpoint in enumerate(endpoints):
                inst = Instance(f"{phase.value}-{index}", phase, endpoint)
                self.by_id[inst.instance_id] = inst
                self.by_phase[phase].append(inst)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.by_id.values())

    def routable(self, phase: Phase, exclude: frozenset[str] | set[str] = frozenset()) -> list[Instance]:
        """Admitted, non-draining instances of ``phase`` below the in-flight limit, minus ``exclude``."""
        limit = self.max_inflight_per_instance
        return [
            inst
            for inst in self.by_phase[phase]
            if inst.admitted
            and not inst.draining
            and inst.inflight < limit
            and inst.instance_id not in exclude
        ]

    def usable(self, phase: Phase) -> list[Instance]:
        """Admitted, non-draining instances of ``phase`` (saturated or not)."""
        return [inst for inst in self.by_phase[phase] if inst.admitted and not inst.draining]

    def views(self, instances: list[Instance]) -> tuple[InstanceState, ...]:
        """Policy views of ``instances`` now."""
        now_s = time.monotonic()
        return tuple(inst.view(now_s, self.stale_after_s) for inst in instances)

    def acquire(self, inst: Instance, prompt_tokens: int = 0) -> None:
        """A request starts on ``inst`` (a prefill: with ``prompt_tokens`` still to compute)."""
        inst.inflight += 1
        inst.pending_prompt_tokens += prompt_tokens
        inst._view = None

    def release(self, inst: Instance, prompt_tokens: int = 0) -> None:
        """A request left ``inst``."""
        inst.inflight -= 1
        inst.pending_prompt_tokens -= prompt_tokens
        inst._view = None

    def record_success(self, inst: Instance) -> None:
        """A request succeeded: reset the failure streak and the ejection record."""
        inst.consecutive_failures = 0
        if inst.admitted:
            inst.ejections = 0

    def record_poll(
        self, inst: Instance, report: LoadReport | None, why: str = "", *, slow: bool = False
    ) -> None:
        """A load poll: its report, or None when it failed (``why``); failed polls in a row eject too.

        ``slow``: the poll timed out (the engine is stalled, not gone). Slow polls alone never eject the last
        usable instance of a phase: requests queue on it (bounded by ``request_timeout_s``) instead of
        getting 503 for the whole stall.
        """
        if report is None:
            inst.poll_failures += 1
            if slow and self._last_usable(inst):
                if inst.admitted and inst.poll_failures == self.eject_after_failures:
                    log.warning(
                        "keeping %s (%s) although its polls time out (%s): it is the last %s instance; "
                        "requests wait for it",
                        inst.instance_id,
                        inst.url,
                        why,
                        inst.phase.value,
                    )
                return
            self._maybe_eject(inst, inst.poll_failures, why)
            return
        inst.poll_failures = 0
        inst.report = report
        inst.inflight_at_poll = inst.inflight
        inst.polled_at_s = time.monotonic()
        inst.touch()

    def record_failure(self, inst: Instance, why: str) -> None:
        """A request failed; eject after ``eject_after_failures`` in a row (one while on probation)."""
        inst.consecutive_failures += 1
        self._maybe_eject(inst, inst.consecutive_failures, why)

    def _last_usable(self, inst: Instance) -> bool:
        """True when ``inst`` is the only admitted, non-draining instance of its phase."""
        return self.usable(inst.phase) == [inst]

    def retry_after_s(self, phase: Phase) -> int:
        """Whole seconds (>= 1) until the first ejected instance of ``phase`` may be probed back in."""
        now_s = time.monotonic()
        waits = [i.quarantine_until_s - now_s for i in self.by_phase[phase] if not i.admitted]
        return max(1, math.ceil(min(waits, default=1.0)))

    def _maybe_eject(self, inst: Instance, streak: int, why: str) -> None:
        if inst.admitted and streak >= self.eject_after_failures:
            inst.admitted = False
            inst.probe_successes = 0
            quarantine_s = min(MAX_QUARANTINE_S, self.readmit_backoff_s * 2**inst.ejections)
            inst.quarantine_until_s = time.monotonic() + quarantine_s
            inst.ejections += 1
            inst.touch()
            log.warning(
                "ejected %s (%s) for at least %.1f s: %s", inst.instance_id, inst.url, quarantine_s, why
            )

    def record_probe(self, inst: Instance, ok: bool) -> None:
        """A health probe of an ejected instance; re-admit after ``readmit_after_successes`` in a row."""
        if inst.admitted or time.monotonic() < inst.quarantine_until_s:
            return
        inst.probe_successes = inst.probe_successes + 1 if ok else 0
        if inst.probe_successes >= self.readmit_after_successes:
            inst.admitted = True
            inst.consecutive_failures = self.eject_after_failures - 1  # probation: one failure ejects again
            inst.poll_failures = 0
            inst.touch()
            log.warning("re-admitted %s (%s)", inst.instance_id, inst.url)

    def model_limits(self) -> dict[str, int | None]:
        """Every model some instance serves, with the smallest known max length (None when unknown)."""
        limits: dict[str, int | None] = {}
        for inst in self.by_id.values():
            for model, max_len in inst.models.items():
                known = limits.get(model)
                if model not in limits or (max_len is not None and (known is None or max_len < known)):
                    limits[model] = max_len
        return limits
