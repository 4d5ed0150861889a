"""Cost of ClockApplier.submit() on the per-iteration path (target: median <= 5 us), printed as a table.

Run: ``.venv/bin/python benchmarks/bench_clock_applier.py``. Each row is the median (and p99) per-call time
over batches of calls, measured in this one run; the ratio column compares against an empty Python call so
that results from different machines can be compared.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench_report import emit, json_path_only
from rich.table import Table

from voltana.core.types import Phase
from voltana.hardware.applier import ClockApplier
from voltana.hardware.simulated import open_simulated, performance_model

BATCH = 100
BATCHES = 2000
TARGET_US = 5.0


def per_call_us(step: Callable[[int], None]) -> list[float]:
    """Per-call times (us) of ``step(i)``, one sample per batch of BATCH calls."""
    samples: list[float] = []
    i = 0
    for _ in range(BATCHES):
        start = time.perf_counter_ns()
        for _ in range(BATCH):
            step(i)
            i += 1
        samples.append((time.perf_counter_ns() - start) / BATCH / 1000.0)
    return samples


def main() -> None:
    json_path = json_path_only(__doc__)
    group = open_simulated(driver_latency_s=0.002)  # a real clock change takes milliseconds
    clocks = group.supported_clocks_mhz()[-28:]  # the paper's 1005..1410 MHz range
    perf = performance_model()
    rows: list[tuple[str, list[float]]] = []

    def empty(i: int) -> None:
        return None

    rows.append(("empty Python call (reference)", per_call_us(empty)))
    with ClockApplier(group) as applier:

        def repeat(i: int) -> None:
            applier.submit(1410)

        def changing(i: int) -> None:
            applier.submit(clocks[i % len(clocks)])

        rows.append(("submit(): same clock again (skipped)", per_call_us(repeat)))
        rows.append(("submit(): new clock every call", per_call_us(changing)))
        applier.wait_applied(5.0)
        driver_calls = group.devices[0].driver_calls  # type: ignore[attr-defined]

    def model_cost(i: int) -> None:
        perf.cost(Phase.DECODE, 32, 32, 32_000, clocks[i % len(clocks)])

    rows.append(("PerformanceModel.cost() (simulator)", per_call_us(model_cost)))

    reference = statistics.median(rows[0][1])
    table = Table(title="submitting a clock decision on the hot path (one run)")
    for column in ("operation", "median µs", "p99 µs", "x empty call"):
        table.add_column(column)
    for label, samples in rows:
        median = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100)[98]
        table.add_row(label, f"{median:.3f}", f"{p99:.3f}", f"{median / reference:.1f}")
    submit_median = statistics.median(rows[2][1])
    verdict = "OK" if submit_median <= TARGET_US else "ABOVE TARGET"
    table.caption = (
        f"submit() with a new clock every call: median {submit_median:.2f} µs (target <= {TARGET_US} µs): "
        f"{verdict}; {BATCH * BATCHES} submissions became {driver_calls} driver calls"
    )
    emit(table, benchmark="bench_clock_applier", json_path=json_path, width=140)


if __name__ == "__main__":
    main()
