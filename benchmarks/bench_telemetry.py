"""Cost of telemetry on the per-iteration path: the iteration hook with telemetry off vs on.

Prints a table, all measured in one run: the median cost of one ``voltana_iteration_finished`` hook call
(through pluggy, every default plugin registered) with telemetry off, on with in-memory sinks, and on while
exporting over OTLP/HTTP to a loopback receiver every 0.1 s in the background; plus one
``voltana_request_finished`` call (one span + request metrics), and the ratios to the "off" row.

    .venv/bin/python benchmarks/bench_telemetry.py
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench_report import emit, json_path_only
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.table import Table

from voltana.core.config import VoltanaConfig
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    IterationRecord,
    Phase,
    RequestRecord,
    ScheduledRequest,
)
from voltana.plugins import DEFAULT_PLUGINS, telemetry

ROUNDS = 100
CALLS_PER_ROUND = 200
REQUEST_ROUNDS = 40  # 40 x 100 finished requests stay below the request queue's capacity (8192)
REQUEST_CALLS_PER_ROUND = 100
CLOCKS_MHZ = (1005, 1110, 1215, 1410)


def median_call_us(
    fn: Callable[[int], object], rounds: int = ROUNDS, calls_per_round: int = CALLS_PER_ROUND
) -> float:
    """Median over rounds of the mean cost of one call (µs); ``fn`` gets the call number."""
    samples = []
    n = 0
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(calls_per_round):
            fn(n)
            n += 1
        samples.append((time.perf_counter_ns() - start) / calls_per_round / 1000)
    return statistics.median(samples)


def median_request_us(fn: Callable[[int], object]) -> float:
    """Like :func:`median_call_us`, sized for the request hook."""
    return median_call_us(fn, REQUEST_ROUNDS, REQUEST_CALLS_PER_ROUND)


def iteration_records() -> list[IterationRecord]:
    """Decode iterations of a 64-request batch cycling through four clocks and two decision reasons."""
    requests = [ScheduledRequest(f"r{i}", 1, 600, 0.0) for i in range(64)]
    snapshot = BatchSnapshot.build(Phase.DECODE, requests, now_s=1.0, instance_id="decode-0")
    records = []
    for i, clock in enumerate(CLOCKS_MHZ * 2):
        reason = DecisionReason.ENERGY_OPTIMAL if i % 2 else DecisionReason.SLO_BOUND
        decision = ClockDecision(clock, reason, "ecofreq", predicted_latency_s=0.021)
        records.append(IterationRecord(snapshot, decision, clock, 1.0, 0.02, 5.5))
    return records


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def loopback_otlp_receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    json_path = json_path_only(__doc__)
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    hook = pm.hook
    records = iteration_records()
    n_records = len(records)
    request = RequestRecord(
        "q", Phase.DECODE, "decode-0", 600, 128, 0.0, 0.1, 2.6, 40.0, {1005: 1.5, 1410: 1.0}, "llama-3.1-8b"
    )

    def iterate(n: int) -> None:
        hook.voltana_iteration_finished(record=records[n % n_records])

    def finish_request(n: int) -> None:
        hook.voltana_request_finished(record=request)

    off_iteration = median_call_us(iterate)
    off_request = median_request_us(finish_request)

    running = telemetry.configure_telemetry(
        VoltanaConfig(telemetry={"prometheus": True}),
        span_exporter=InMemorySpanExporter(),
        metric_readers=(InMemoryMetricReader(),),
    )
    assert running is not None
    on_iteration = median_call_us(iterate)
    on_request = median_request_us(finish_request)
    running.process_pending()
    worker_request = median_request_us(lambda n: running.record_request_now(request))
    telemetry.shutdown_telemetry()

    with loopback_otlp_receiver() as endpoint:
        config = VoltanaConfig(
            telemetry={
                "exporter": "otlp",
                "endpoint": endpoint,
                "export_interval_s": 0.1,
                "export_timeout_s": 2.0,
            }
        )
        telemetry.configure_telemetry(config)
        exporting_iteration = median_call_us(iterate)
        exporting_request = median_request_us(finish_request)
        telemetry.shutdown_telemetry()

    rows = [
        ("iteration hook, telemetry off", off_iteration, off_iteration),
        ("iteration hook, telemetry on (in-memory sinks)", on_iteration, off_iteration),
        ("iteration hook, on + OTLP/HTTP export every 0.1 s", exporting_iteration, off_iteration),
        ("request hook, telemetry off", off_request, off_request),
        ("request hook, telemetry on (queues the record)", on_request, off_request),
        ("request hook, on + OTLP/HTTP export", exporting_request, off_request),
        ("span + metrics of one request (worker thread)", worker_request, off_request),
    ]
    table = Table(title="telemetry cost on the engine's hooks (one run)")
    for column in ("path", "median µs/call", "ratio to off", "share of a 5 ms iteration"):
        table.add_column(column)
    for name, cost_us, baseline_us in rows:
        table.add_row(name, f"{cost_us:.2f}", f"{cost_us / baseline_us:.1f}x", f"{cost_us / 5000:.3%}")
    impls = len(hook.voltana_iteration_finished.get_hookimpls())
    table.caption = (
        f"{impls} voltana_iteration_finished implementation(s). The iteration hook runs once per engine "
        "iteration, the request hook once per finished request phase; the last row runs on telemetry's "
        "worker thread, not the engine's."
    )
    emit(table, benchmark="bench_telemetry", json_path=json_path)


if __name__ == "__main__":
    main()
