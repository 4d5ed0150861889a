"""Prometheus exposition of the pipeline's OpenTelemetry metrics, for engines without OTLP and the router.

OpenTelemetry's Prometheus exporter (``opentelemetry-exporter-prometheus``: a ``PrometheusMetricReader``)
turns the metrics into Prometheus families when scraped, in a ``prometheus_client`` registry of this
pipeline's own (never the process-wide one: vLLM serves that at its ``/metrics``); ``prometheus_client``
renders the text (format 0.0.4) and serves it (``start_http_server``).

Names follow the OpenTelemetry-to-Prometheus compatibility rules as the exporter applies them: dots become
underscores, the unit is appended as a word (``hw.energy`` in J -> ``hw_energy_joules_total``; units without
a word stay as written: ``MHz``), counters end in ``_total``, the dimensionless ``1`` and ``{…}`` annotation
units add nothing. Neither a ``target_info`` family nor ``otel_scope_*`` labels are added.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""What :func:`PrometheusExposition.text` is (and what the endpoint answers a plain scrape with)."""


class PrometheusExposition:
    """A metric reader to hand to the ``MeterProvider``, its Prometheus text, and optionally an endpoint.

    ``reader`` collects from the provider at each scrape or :meth:`text` call (no background work)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def text(self) -> str:
        """The current metrics in the Prometheus text format 0.0.4."""
        return generate_latest(self.registry).decode()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve the metrics at ``http://host:port/metrics`` from a daemon thread; returns the bound port
        (``port=0`` picks a free one). Raises OSError when the port is taken."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    @property
    def port(self) -> int | None:
        """The port being served (None when not serving)."""
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        """Stop serving (if serving) and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
