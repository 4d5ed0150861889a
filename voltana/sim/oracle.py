"""The hindsight oracle: the best static clock per phase, chosen after the fact at a reference SLO attainment.

The reference for clock policies: the best a fixed clock per phase could do, knowing the workload in advance.
Definition (the reference is static max, every clock at its highest with its round-robin routing):

1. Routing. The oracle routes like ecofreq (predicted-TTFT prefill, EcoRoute decode, its routers told the
   clocks are pinned), so that next to ecofreq only the clocks differ. If that routing, with every clock at
   its highest, cannot reach the reference's SLO attainment, no static clock pair with it can, and its
   energy difference would be a routing effect bought with missed SLOs; the oracle then routes like the
   reference instead (round-robin), where its top clocks reproduce the reference exactly. So the oracle
   always meets the reference's attainment, and never reports a saving that comes from routing alone at
   a lower attainment. :attr:`OracleChoice.routing` says which routing it used.
2. Clocks. For each phase, the other phase pinned at the highest clock, every clock of a grid is simulated
   and the one with the least energy of that phase whose per-phase attainment (TTFT for prefill, ITL for
   decode) is at least the reference's is kept. The pair is then simulated together; while its joint SLO
   attainment is below the reference, the phase whose attainment fell short steps one grid clock up (at
   worst to the top pair, which reaches the reference by step 1). Grid: every ``stride``-th allowed clock
   (default: all) plus the max.

A per-iteration policy can still beat it: the best static clock must cover the busiest moments, a dynamic
one need not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from voltana.core.types import Phase
from voltana.sim.metrics import PolicyResult
from voltana.sim.runner import ORACLE, SimulationSetup, allowed_clocks_mhz, run_policy, static_spec
from voltana.sim.workload import Workload

ATTAINMENT_TOLERANCE = 1e-9
ROUTING_OF = "ecofreq"
"""The oracle routes as ecofreq does (predicted-TTFT prefill, EcoRoute decode), isolating the clocks."""
FALLBACK_ROUTING_OF = "static-max"
"""...unless that routing cannot reach the reference's attainment at the top clocks: then as static max."""


@dataclass(frozen=True)
class OracleChoice:
    """The chosen static clocks (MHz), the routing (a clock policy's default routes) and their result."""

    prefill_clock_mhz: int
    decode_clock_mhz: int
    result: PolicyResult
    runs: int
    routing: str = ROUTING_OF


def clock_grid(clocks_mhz: Sequence[int], stride: int) -> tuple[int, ...]:
    """Every ``stride``-th clock from the lowest, always including the highest (ascending)."""
    grid = list(clocks_mhz[::stride])
    if grid[-1] != clocks_mhz[-1]:
        grid.append(clocks_mhz[-1])
    return tuple(grid)


def hindsight_oracle(
    setup: SimulationSetup,
    workload: Workload,
    reference: PolicyResult,
    rate_rps: float | None = None,
    stride: int = 1,
    progress: Callable[[], None] | None = None,
) -> OracleChoice:
    """Least-energy static (prefill, decode) clocks reaching ``reference.slo_attainment`` (see module doc)."""
    grid = clock_grid(allowed_clocks_mhz(setup.config, setup.cluster.model), stride)
    top = grid[-1]
    cache: dict[tuple[str, int, int], PolicyResult] = {}

    def run(routing: str, prefill_mhz: int, decode_mhz: int) -> PolicyResult:
        key = (routing, prefill_mhz, decode_mhz)
        if key not in cache:
            spec = static_spec(prefill_mhz, decode_mhz, ORACLE, routes_of=routing)
            cache[key] = run_policy(setup, spec, workload, rate_rps)
            if progress is not None:
                progress()
        return cache[key]

    def reaches(result: PolicyResult) -> bool:
        return result.slo_attainment + ATTAINMENT_TOLERANCE >= reference.slo_attainment

    routing = ROUTING_OF if reaches(run(ROUTING_OF, top, top)) else FALLBACK_ROUTING_OF

    def best_for(phase: Phase) -> int:
        best_clock, best_energy = top, float("inf")
        for clock in grid:
            if phase is Phase.PREFILL:
                result = run(routing, clock, top)
                ok = result.ttft_attainment + ATTAINMENT_TOLERANCE >= reference.ttft_attainment
                energy = result.prefill_energy_j
            else:
                result = run(routing, top, clock)
                ok = result.itl_attainment + ATTAINMENT_TOLERANCE >= reference.itl_attainment
                energy = result.decode_energy_j
            if ok and energy < best_energy:
                best_clock, best_energy = clock, energy
        return best_clock

    prefill_mhz, decode_mhz = best_for(Phase.PREFILL), best_for(Phase.DECODE)
    result = run(routing, prefill_mhz, decode_mhz)
    while not reaches(result) and (prefill_mhz < top or decode_mhz < top):
        ttft_short = result.ttft_attainment < reference.ttft_attainment
        if (ttft_short or decode_mhz == top) and prefill_mhz < top:
            prefill_mhz = grid[grid.index(prefill_mhz) + 1]
        else:
            decode_mhz = grid[grid.index(decode_mhz) + 1]
        result = run(routing, prefill_mhz, decode_mhz)
    routed = "" if routing == ROUTING_OF else f", {routing} routing"
    named = replace(result, policy=f"{ORACLE} (P {prefill_mhz} / D {decode_mhz} MHz{routed})")
    return OracleChoice(prefill_mhz, decode_mhz, named, len(cache), routing)
