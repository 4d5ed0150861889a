"""Prometheus text exposition (format 0.0.4) of OpenTelemetry metrics: for engines without OTLP, the router.

Names follow the OpenTelemetry-to-Prometheus compatibility rules: dots become underscores, the unit is
appended as a word (``hw.energy`` in J -> ``hw_energy_joules_total``), counters end in ``_total``, ``{…}``
annotation units are dropped.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, MetricsData, Sum

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNIT_WORDS = {
    "s": "seconds",
    "ms": "milliseconds",
    "J": "joules",
    "W": "watts",
    "MHz": "megahertz",
    "1": "ratio",
}
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(metric: Metric) -> str:
    """The Prometheus name of ``metric`` (counters get ``_total`` on top, in :func:`render_prometheus`)."""
    name = _INVALID_NAME.sub("_", metric.name)
    word = UNIT_WORDS.get(metric.unit or "", "")
    if word and not name.endswith("_" + word):
        name = f"{name}_{word}"
    return name


def _label_name(key: str) -> str:
    name = _INVALID_LABEL.sub("_", key)
    return f"_{name}" if name[:1].isdigit() else name


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(item) for item in value)
    else:
        text = str(value)
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(attributes: Mapping[str, Any] | None, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [f'{_label_name(k)}="{_label_value(v)}"' for k, v in sorted((attributes or {}).items())]
    pairs.extend(f'{k}="{v}"' for k, v in extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _family_lines(name: str, metric: Metric) -> tuple[str, list[str]]:
    data = metric.data
    if isinstance(data, (Sum, Gauge)):
        kind = "counter" if isinstance(data, Sum) and data.is_monotonic else "gauge"
        return kind, [f"{name}{_labels(p.attributes)} {_number(p.value)}" for p in data.data_points]
    if isinstance(data, Histogram):
        lines: list[str] = []
        for point in data.data_points:
            cumulative = 0
            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                cumulative += count
                lines.append(
                    f"{name}_bucket{_labels(point.attributes, [('le', _number(float(bound)))])} {cumulative}"
                )
            lines.append(f"{name}_bucket{_labels(point.attributes, [('le', '+Inf')])} {point.count}")
            lines.append(f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}")
            lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")
        return "histogram", lines
    return "untyped", []


def render_prometheus(metrics_data: MetricsData | None) -> str:
    """Render collected metrics as Prometheus text; families with the same name are merged."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for resource_metrics in metrics_data.resource_metrics if metrics_data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                name = prometheus_name(metric)
                if isinstance(metric.data, Sum) and metric.data.is_monotonic:
                    name += "_total"  # text format 0.0.4: the TYPE line names the sample, suffix included
                kind, lines = _family_lines(name, metric)
                if name in families:
                    families[name][2].extend(lines)
                else:
                    families[name] = (kind, metric.description or "", lines)
    out: list[str] = []
    for name, (kind, description, lines) in families.items():
        help_text = description.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


class PrometheusEndpoint:
    """``GET /metrics`` on a loopback port from a daemon thread (for engine processes without their own)."""

    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 0) -> None:
        handler = _handler_for(render)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="voltana-prometheus", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def _handler_for(render: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return MetricsHandler
