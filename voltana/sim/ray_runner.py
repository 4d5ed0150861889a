"""Rate sweeps and policy grids as Ray tasks: `voltana simulate --workers N` (local Ray) or `--ray ADDRESS`.

Each (rate, policy) pair is one task running :func:`voltana.sim.sweep.run_sweep` on that pair alone (the
oracle: one task per rate, with its static-max reference); the driver puts the results back in the serial
order and recomputes the savings, so the sweep equals the serial one for the same seed, result for result.
Workers rebuild the plugin manager (a hook does not travel); voltana must be installed on every node of a
remote cluster (the same version as the driver's).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from voltana.plugins import get_plugin_manager
from voltana.sim.metrics import PolicyResult
from voltana.sim.rates import rate_text
from voltana.sim.runner import ORACLE, SimulationError, SimulationSetup
from voltana.sim.sweep import BASELINE, SweepPoint, plan_runs, run_sweep, sweep_point
from voltana.sim.workload import Workload


class RayUnavailableError(SimulationError):
    """Ray is not installed, cannot start, or the cluster at ``--ray`` cannot be reached (one line)."""


def import_ray() -> Any:
    """The ``ray`` module; raises :class:`RayUnavailableError` naming the fix when it cannot be imported."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # a broken amdsmi prints to stdout
            import ray  # noqa: PLC0415 - optional [ray] extra
    except ImportError:
        raise RayUnavailableError("Ray is not installed: pip install 'voltana[ray]'") from None
    except (KeyError, OSError) as exc:  # Ray 2.60 imports amdsmi, which raises KeyError without ROCm
        raise RayUnavailableError(
            f"Ray cannot be imported ({type(exc).__name__}: {exc}): the amdsmi package is installed but "
            "ROCm's libamd_smi.so is not; uninstall amdsmi or install ROCm"
        ) from None
    return ray


@contextmanager
def ray_session(address: str | None, workers: int | None) -> Iterator[Any]:
    """Ray connected to ``address``, else a local Ray with ``workers`` CPUs (stopped afterwards)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address is not None:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayUnavailableError(f"cannot start {where}: {str(exc).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _one_unit(
    setup: SimulationSetup,
    policy: str,
    workload_at: Callable[[float], Workload],
    rate: float,
    prefill_route: str | None,
    timeline_policy: str | None,
    oracle_stride: int,
) -> tuple[PolicyResult, ...]:
    """One task: ``policy`` at ``rate`` (the oracle: its reference, then it), with a fresh plugin hook."""

    here = replace(setup, hook=get_plugin_manager().hook)
    (point,) = run_sweep(here, [policy], workload_at, [rate], prefill_route, timeline_policy, oracle_stride)
    return point.results


def run_sweep_on_ray(
    setup: SimulationSetup,
    policies: Sequence[str],
    workload_at: Callable[[float], Workload],
    rates_rps: Sequence[float],
    *,
    address: str | None = None,
    workers: int | None = None,
    prefill_route: str | None = None,
    timeline_policy: str | None = None,
    oracle_stride: int = 1,
    num_clocks: int = 1,
    on_run: Callable[[str, float], None] | None = None,
) -> list[SweepPoint]:
    """:func:`~voltana.sim.sweep.run_sweep` with every (rate, policy) as a Ray task (see module docstring).

    ``num_clocks`` (the allowed clocks) sizes the oracle's share of the progress (``on_run`` is called once
    per simulation, as serially). Raises :class:`RayUnavailableError` or ``SimulationError`` (one line).
    """
    plain = [p for p in policies if p != ORACLE]
    units = [(rate, p) for rate in rates_rps for p in plain + ([ORACLE] if ORACLE in policies else [])]
    shipped = replace(setup, hook=None)
    with ray_session(address, workers) as ray:
        task = ray.remote(num_cpus=1)(_one_unit)
        refs = {
            task.remote(shipped, p, workload_at, rate, prefill_route, timeline_policy, oracle_stride): (
                rate,
                p,
            )
            for rate, p in units
        }
        done: dict[tuple[float, str], tuple[PolicyResult, ...]] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            unit = refs[ready[0]]
            try:
                done[unit] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                raise SimulationError(
                    f"{unit[1]} @ {rate_text(unit[0], rates_rps)} req/s failed: {cause}"
                ) from None
            if on_run is not None:
                runs = plan_runs([unit[1]], oracle_stride, num_clocks)
                for _ in range(runs):
                    on_run(unit[1], unit[0])
    points = []
    for rate in rates_rps:
        results = [done[(rate, p)][0] for p in plain]
        if ORACLE in policies:
            reference, oracle = done[(rate, ORACLE)]
            results.append(oracle)
            if all(r.policy != BASELINE for r in results):
                results.insert(0, reference)
        points.append(sweep_point(setup, rate, results, workload_at(rate)))
    return points
