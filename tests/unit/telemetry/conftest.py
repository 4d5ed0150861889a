"""Telemetry fixtures: a pipeline configured in this process with in-memory span and metric sinks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry_helpers import Pipeline

from voltana.core.config import VoltanaConfig
from voltana.plugins import telemetry


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    """Telemetry configured in this process with in-memory sinks (SLO: TTFT 0.8 s, ITL 0.05 s)."""
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    config = VoltanaConfig(telemetry={"prometheus": True}, slo={"ttft_s": 0.8, "itl_s": 0.05})
    running = telemetry.configure_telemetry(config, span_exporter=spans, metric_readers=(reader,))
    assert running is not None
    yield Pipeline(running, spans, reader)
    telemetry.shutdown_telemetry()
