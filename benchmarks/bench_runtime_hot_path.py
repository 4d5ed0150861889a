"""Cost of the engine-neutral runtime's per-iteration path, against the GPU time of that iteration.

A real :class:`InstanceRuntime` (simulated A100 group, clock applier, energy meter, EcoFreq controller, the
installed plugins) runs a steady decode stream at each batch size: every iteration calls
``before_iteration`` + ``after_iteration``, and requests that leave (each decodes ``--lifetime`` tokens, the
batch stays full) are reported with ``request_finished`` inside the timed span, so work deferred to a
request's end is counted. The snapshot (one ``ScheduledRequest`` per request, ``BatchSnapshot.build``) is
what every adapter builds before calling the runtime: its median is a separate column, outside the span.
The ratio column divides the median runtime cost by the simulated A100's decode iteration latency
(Llama-3.1-8B, max clock) at that batch and context: the share of an iteration voltana costs.

    .venv/bin/python benchmarks/bench_runtime_hot_path.py [--iterations 2000] [--batches 1,32,256]
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import MOST_BATCH, add_json_option, argument_parser, batch_sizes, count, emit
from rich.table import Table

from voltana.adapters.runtime import InstanceRuntime
from voltana.core.config import VoltanaConfig
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.hardware.simulated import performance_model

PROMPT_TOKENS = 512


@dataclass
class BatchTimings:
    """What one batch size measured: per-iteration runtime and snapshot times (s), mean context tokens."""

    runtime_s: list[float]
    snapshot_s: list[float]
    mean_context_tokens: float


def measure_batch(batch_size: int, iterations: int, lifetime: int) -> BatchTimings:
    """Run ``iterations`` decode steps of a full batch of ``batch_size`` through a fresh runtime."""
    config = VoltanaConfig(enabled=True, hardware={"vendor": "simulated"})  # type: ignore[arg-type]
    runtime = InstanceRuntime.start(config, Phase.DECODE, f"bench-{batch_size}")
    # ages[i]: tokens slot i's request has generated; staggered so a few requests leave every iteration
    ages = [(i * lifetime) // batch_size for i in range(batch_size)]
    serial = list(range(batch_size))
    next_serial = batch_size
    timings = BatchTimings([], [], 0.0)
    context_total = 0
    try:
        for step in range(iterations):
            now_s = time.perf_counter()
            requests = [
                ScheduledRequest(f"r{serial[i]}", 1, PROMPT_TOKENS + ages[i], now_s - 1.0)
                for i in range(batch_size)
            ]
            snapshot = BatchSnapshot.build(Phase.DECODE, requests, now_s, iteration=step, instance_id="b")
            timings.snapshot_s.append(time.perf_counter() - now_s)
            context_total += snapshot.num_context_tokens
            leaving = []
            for i in range(batch_size):
                ages[i] += 1
                if ages[i] >= lifetime:
                    leaving.append((f"r{serial[i]}", ages[i]))
                    serial[i], ages[i] = next_serial, 0
                    next_serial += 1
            t0 = time.perf_counter()
            runtime.before_iteration(snapshot)
            runtime.after_iteration(())
            for request_id, output_tokens in leaving:
                runtime.request_finished(
                    request_id, input_tokens=PROMPT_TOKENS, output_tokens=output_tokens, finish_time_s=now_s
                )
            timings.runtime_s.append(time.perf_counter() - t0)
    finally:
        runtime.close()
    timings.mean_context_tokens = context_total / max(1, iterations)
    return timings


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--iterations", type=count, default=2000, help="timed iterations per batch size")
    parser.add_argument(
        "--batches",
        type=batch_sizes,
        default="1,32,256",
        help=f"comma-separated decode batch sizes (1 to {MOST_BATCH})",
    )
    parser.add_argument("--lifetime", type=count, default=128, help="decode steps per request")
    add_json_option(parser)
    args = parser.parse_args()
    model = performance_model("a100-80gb", "llama-3.1-8b")
    table = Table(title="engine-neutral runtime per decode iteration (one run)")
    for column in (
        "batch",
        "runtime µs/iter",
        "p90 µs",
        "mean µs",
        "snapshot µs",
        "A100 iter µs",
        "runtime/A100",
    ):
        table.add_column(column, justify="right")
    for batch_size in args.batches:
        timings = measure_batch(batch_size, args.iterations, args.lifetime)
        context = int(timings.mean_context_tokens)
        gpu_s = model.cost(Phase.DECODE, batch_size, batch_size, context, model.max_clock_mhz).latency_s
        ordered = sorted(timings.runtime_s)
        median_s = statistics.median(ordered)
        p90_s = ordered[int(0.9 * (len(ordered) - 1))]
        mean_s = statistics.fmean(ordered)
        snapshot_s = statistics.median(timings.snapshot_s)
        table.add_row(
            str(batch_size),
            f"{median_s * 1e6:.1f}",
            f"{p90_s * 1e6:.1f}",
            f"{mean_s * 1e6:.1f}",
            f"{snapshot_s * 1e6:.1f}",
            f"{gpu_s * 1e6:.0f}",
            f"{median_s / gpu_s:.3%}",
        )
    emit(table, benchmark="bench_runtime_hot_path", json_path=args.json)


if __name__ == "__main__":
    main()
