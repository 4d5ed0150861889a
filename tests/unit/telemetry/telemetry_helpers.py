"""Telemetry test helpers: the in-memory pipeline handle, metric lookups, record builders."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    IterationRecord,
    Phase,
    ScheduledRequest,
)
from voltana.plugins.telemetry.pipeline import Telemetry


@dataclass
class Pipeline:
    """A running telemetry pipeline and its in-memory sinks."""

    telemetry: Telemetry
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished_spans(self) -> list[ReadableSpan]:
        self.telemetry.force_flush()
        return list(self.spans.get_finished_spans())

    def metrics(self) -> dict[str, Metric]:
        self.telemetry.process_pending()
        return metrics_by_name(self.reader.get_metrics_data())


def metrics_by_name(data: MetricsData | None) -> dict[str, Metric]:
    """Every metric of a collection, by name."""
    found: dict[str, Metric] = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found[metric.name] = metric
    return found


def point_values(metric: Metric) -> dict[frozenset[tuple[str, Any]], Any]:
    """Data points of a sum/gauge metric keyed by their attribute set."""
    return {frozenset((p.attributes or {}).items()): p.value for p in metric.data.data_points}


def iteration(
    phase: Phase,
    instance_id: str,
    requests: list[ScheduledRequest],
    *,
    clock_mhz: int = 1410,
    latency_s: float = 0.02,
    energy_j: float | None = 5.0,
    reason: DecisionReason = DecisionReason.ENERGY_OPTIMAL,
    predicted_latency_s: float | None = None,
    start_time_s: float = 0.0,
) -> IterationRecord:
    """An IterationRecord of one instance's batch."""
    snapshot = BatchSnapshot.build(phase, requests, now_s=start_time_s, instance_id=instance_id)
    decision = ClockDecision(clock_mhz, reason, "ecofreq", predicted_latency_s=predicted_latency_s)
    return IterationRecord(snapshot, decision, clock_mhz, start_time_s, latency_s, energy_j)


class OtlpReceiver:
    """A tiny OTLP/HTTP receiver on 127.0.0.1: keeps every POST; answers ``fail_status`` while it is set."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        self.fail_status: int | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append((self.path, self.headers.get("Content-Type", ""), body))
                status = receiver.fail_status or 200
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str) -> list[bytes]:
        return [body for posted_path, _, body in self.posts if posted_path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` every 20 ms until it holds or ``timeout_s`` passes (bounded loop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
