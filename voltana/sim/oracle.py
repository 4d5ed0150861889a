"""The hindsight oracle: the best static clock per phase, chosen after the fact at a reference SLO attainment.

The reference for clock policies: the best a fixed clock per phase could do, knowing the workload in advance.
It routes like ecofreq (so routing gains are not counted as clock gains). A per-iteration policy can still
beat it: the best static clock must cover the busiest moments, a dynamic one need not. For each phase, the
other phase pinned at the highest clock, every clock of a grid is simulated and the one with the least energy
of that phase whose per-phase attainment (TTFT for prefill, ITL for decode) is at least the reference's is
kept. The pair is then simulated together; while its joint SLO attainment is below the reference, the phase
whose attainment fell short steps one grid clock up. Grid: every ``stride``-th allowed clock (default: all)
plus the max.
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


@dataclass(frozen=True)
class OracleChoice:
    """The chosen static clocks (MHz) and the result of running them together."""

    prefill_clock_mhz: int
    decode_clock_mhz: int
    result: PolicyResult
    runs: int


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
    runs = 0

    def run(prefill_mhz: int, decode_mhz: int) -> PolicyResult:
        nonlocal runs
        runs += 1
        spec = static_spec(prefill_mhz, decode_mhz, ORACLE, routes_of=ROUTING_OF)
        result = run_policy(setup, spec, workload, rate_rps)
        if progress is not None:
            progress()
        return result

    def best_for(phase: Phase) -> int:
        best_clock, best_energy = top, float("inf")
        for clock in grid:
            result = run(clock, top) if phase is Phase.PREFILL else run(top, clock)
            if phase is Phase.PREFILL:
                ok = result.ttft_attainment + ATTAINMENT_TOLERANCE >= reference.ttft_attainment
                energy = result.prefill_energy_j
            else:
                ok = result.itl_attainment + ATTAINMENT_TOLERANCE >= reference.itl_attainment
                energy = result.decode_energy_j
            if ok and energy < best_energy:
                best_clock, best_energy = clock, energy
        return best_clock

    prefill_mhz, decode_mhz = best_for(Phase.PREFILL), best_for(Phase.DECODE)
    result = run(prefill_mhz, decode_mhz)
    while result.slo_attainment + ATTAINMENT_TOLERANCE < reference.slo_attainment and (
        prefill_mhz < top or decode_mhz < top
    ):
        ttft_short = result.ttft_attainment < reference.ttft_attainment
        if (ttft_short or decode_mhz == top) and prefill_mhz < top:
            prefill_mhz = grid[grid.index(prefill_mhz) + 1]
        else:
            decode_mhz = grid[grid.index(decode_mhz) + 1]
        result = run(prefill_mhz, decode_mhz)
    named = replace(result, policy=f"{ORACLE} (P {prefill_mhz} / D {decode_mhz} MHz)")
    return OracleChoice(prefill_mhz, decode_mhz, named, runs)
