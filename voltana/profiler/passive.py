"""``voltana profile --engine URL --passive``: refresh a profile without taking instances out of service.

It reads the iterations of normal traffic (at the clocks the policy chooses) for ``duration_s``, and spends
up to ``explore_s`` on short pinned probes of clocks the policy has not visited, only when the SLO allows:
a probe of clock ``f`` is made when the recent iterations of that phase, slowed to ``f`` in the worst case
(latency x f_ran / f, all compute-bound), stay within the SLO (TTFT for prefill, ITL for decode) with a
10% margin. Clocks above every visited one only get faster, so they are always allowed. The profile covers
the clocks with at least :data:`MIN_SAMPLES` iterations in every profiled phase.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voltana.core.profile import PhaseFit, save_profile
from voltana.core.types import Phase
from voltana.plugins.ecofreq.factory import PREFILL_SEGMENT_ENDS
from voltana.profiler.client import ClockLease, EngineClient, EngineInfo, ProfilerError
from voltana.profiler.fit import ClockQuality, FitError, build_profile, fit_records, sample_of
from voltana.profiler.plan import decode_segments
from voltana.profiler.run import Progress, phases_of

MIN_SAMPLES = 20
"""Iterations a clock needs (per phase) to be fitted."""
SLO_MARGIN = 0.1
RECENT = 200
"""Iterations of a phase the SLO check of a probe looks at (the newest)."""
POLL_S = 1.0


@dataclass(frozen=True)
class PassiveRequest:
    """What ``--passive`` was asked for."""

    engines: tuple[str, ...]
    output: Path
    phase: str
    token: str | None
    duration_s: float
    explore_s: float
    ttft_s: float
    itl_s: float
    probe_s: float = 2.0


@dataclass
class PassiveOutcome:
    """The profile written (None if no clock had enough iterations), fit quality, visited/probed clocks."""

    path: Path | None
    quality: dict[Phase, list[ClockQuality]]
    visited: list[int] = field(default_factory=list)
    probed: list[int] = field(default_factory=list)


def slo_allows(records: Sequence[Mapping[str, Any]], phase: Phase, clock_mhz: int, slo_s: float) -> bool:
    """Whether pinning ``clock_mhz`` keeps the recent iterations of ``phase`` within ``slo_s`` (worst case:
    latency scales with the clock period); False without recent iterations (nothing to learn then)."""
    recent = [r for r in records if r.get("phase") == phase.value and r.get("latency_s")][-RECENT:]
    if not recent:
        return False
    scaled = [float(r["latency_s"]) * max(1.0, int(r["clock_mhz"]) / clock_mhz) for r in recent]
    return float(np.percentile(scaled, 95)) <= slo_s * (1.0 - SLO_MARGIN)


def clock_counts(records: Sequence[Mapping[str, Any]], phase: Phase) -> dict[int, int]:
    """Usable iterations of ``phase`` per clock (read back)."""
    counts: dict[int, int] = {}
    for record in records:
        sample = sample_of(record, phase)
        if sample is not None:
            counts[sample.clock_mhz] = counts.get(sample.clock_mhz, 0) + 1
    return counts


def run_passive(request: PassiveRequest, progress: Progress) -> PassiveOutcome:
    """Observe, probe within the budget, fit, write; raises ProfilerError / FitError with one line."""
    clients = {url.rstrip("/"): EngineClient(url, request.token) for url in request.engines}
    leases: dict[str, ClockLease] = {}
    records: dict[str, list[dict[str, Any]]] = {url: [] for url in clients}
    probed: list[int] = []
    try:
        infos = {url: client.info() for url, client in clients.items()}
        if request.explore_s >= request.probe_s:  # no probe fits the budget: nothing to pin, no token needed
            for client in clients.values():
                client.check_access()
        since = {url: client.last_seq() for url, client in clients.items()}
        leases = {url: ClockLease(client, 10.0) for url, client in clients.items()}
        explore_left = request.explore_s
        progress.start(round(request.duration_s), "observing traffic")
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < request.duration_s:
            time.sleep(min(POLL_S, request.duration_s - elapsed))
            for url, client in clients.items():
                new, since[url], _ = client.iterations(since[url])
                records[url].extend(new)
            progress.advance(round(time.monotonic() - start) - round(elapsed))
            if explore_left < request.probe_s:
                continue
            for url, info in infos.items():
                clock = _probe_candidate(records[url], phases_of(info, request.phase), info, request)
                if clock is None or explore_left < request.probe_s:
                    continue
                leases[url].pin(clock)
                time.sleep(request.probe_s)
                leases[url].unpin()
                explore_left -= request.probe_s
                probed.append(clock)
    finally:
        for lease in leases.values():
            lease.release()
        for client in clients.values():
            client.close()
    return _fit_passive(request, infos, records, probed)


def _probe_candidate(
    records: Sequence[Mapping[str, Any]], phases: Sequence[Phase], info: EngineInfo, request: PassiveRequest
) -> int | None:
    """The highest allowed clock still short of samples that the SLO allows for every phase of the engine."""
    for clock in sorted(info.allowed_clocks_mhz, reverse=True):
        if all(clock_counts(records, p).get(clock, 0) >= MIN_SAMPLES for p in phases):
            continue
        if all(
            slo_allows(records, p, clock, request.ttft_s if p is Phase.PREFILL else request.itl_s)
            for p in phases
        ):
            return clock
    return None


def _fit_passive(
    request: PassiveRequest,
    infos: Mapping[str, EngineInfo],
    records: Mapping[str, list[dict[str, Any]]],
    probed: list[int],
) -> PassiveOutcome:
    phases = sorted(
        {p for info in infos.values() for p in phases_of(info, request.phase)}, key=lambda p: p.value
    )
    everything = [r for rs in records.values() for r in rs]
    usable: set[int] | None = None
    for phase in phases:
        counts = {c for c, n in clock_counts(everything, phase).items() if n >= MIN_SAMPLES}
        usable = counts if usable is None else usable & counts
    clocks = tuple(sorted(usable or ()))
    visited = sorted({int(r["clock_mhz"]) for r in everything if r.get("pinned_mhz") is None})
    if not clocks:
        raise FitError(
            f"no clock had {MIN_SAMPLES}+ iterations of every phase in {request.duration_s:g}s "
            "(more traffic, a longer --duration-minutes or a larger --explore-seconds)"
        )
    fits: dict[Phase, PhaseFit] = {}
    quality: dict[Phase, list[ClockQuality]] = {}
    for phase in phases:
        if phase is Phase.PREFILL:
            ends: tuple[int, ...] = PREFILL_SEGMENT_ENDS
        else:
            sizes = next(
                (i.capture_sizes for i in infos.values() if Phase.DECODE in phases_of(i, request.phase)), ()
            )
            ends = decode_segments(sizes)
        fits[phase], quality[phase] = fit_records(everything, phase, clocks, ends)
    metadata = {
        "profiled": "engine (passive)",
        "engines": sorted(infos),
        "visited_mhz": visited,
        "probed_mhz": sorted(set(probed)),
        "fit_quality": {p.value: [q.to_json() for q in qs] for p, qs in quality.items()},
    }
    model = next(iter(infos.values())).model_id
    path = save_profile(
        build_profile(fits, clocks, f"voltana profile --passive ({model})", metadata), request.output
    )
    return PassiveOutcome(path, quality, visited, sorted(set(probed)))


__all__ = ["PassiveRequest", "ProfilerError", "run_passive"]
