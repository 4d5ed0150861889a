"""Turning an engine's load report into numbers: vLLM's Prometheus ``/metrics`` and SGLang's ``/v1/loads``.

Pure functions (no I/O) so they are tested on captured text. Values of several engines/DP ranks are summed.
The Prometheus text format is parsed by ``prometheus_client`` (escaping, quoting and label rules are its).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, then pre-0.10 name
VLLM_CACHE_INFO = "vllm:cache_config_info"
_WANTED = frozenset((VLLM_RUNNING, VLLM_WAITING, *VLLM_KV_USAGE, VLLM_CACHE_INFO))


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One poll's view of an instance: requests running/waiting, KV tokens used and the KV capacity."""

    num_running: int = 0
    num_waiting: int = 0
    kv_tokens: int = 0
    kv_capacity_tokens: int = 0


def _vllm_samples(text: str) -> Iterator[Sample]:
    """The samples of the metrics we read, parsed by ``prometheus_client``'s exposition parser.

    Only the lines of the wanted metrics are parsed (vLLM's page is mostly histogram buckets), one at a
    time so that one malformed line costs that line, not the whole poll.
    """
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in _WANTED:
            continue
        try:
            for family in text_string_to_metric_families(line + "\n"):
                yield from family.samples
        except ValueError:
            continue


def parse_vllm_metrics(text: str) -> LoadReport:
    """Read running/waiting requests and KV usage from vLLM's Prometheus text.

    KV tokens = usage fraction x capacity, capacity = ``num_gpu_blocks x block_size`` from
    ``vllm:cache_config_info`` labels (0 when vLLM does not expose it). Usage fractions of several engines are
    averaged, counts summed. Malformed lines are ignored.
    """
    running = waiting = 0.0
    usages: list[float] = []
    capacity = 0
    for sample in _vllm_samples(text):
        if sample.name == VLLM_RUNNING:
            running += sample.value
        elif sample.name == VLLM_WAITING:
            waiting += sample.value
        elif sample.name in VLLM_KV_USAGE:
            usages.append(sample.value)
        elif sample.name == VLLM_CACHE_INFO:
            with contextlib.suppress(KeyError, ValueError):
                capacity += int(sample.labels["num_gpu_blocks"]) * int(sample.labels["block_size"])
    usage = sum(usages) / len(usages) if usages else 0.0
    return LoadReport(int(running), int(waiting), round(usage * capacity), capacity)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def parse_sglang_loads(payload: Any) -> LoadReport:
    """Sum SGLang's ``/v1/loads`` entries (one per DP rank): requests, used and total KV tokens."""
    loads = payload.get("loads") if isinstance(payload, dict) else None
    if not isinstance(loads, list):
        raise ValueError("SGLang /v1/loads answer has no 'loads' list")
    running = waiting = used = total = 0
    for entry in loads:
        if not isinstance(entry, dict):
            continue
        running += _int(entry.get("num_running_reqs"))
        waiting += _int(entry.get("num_waiting_reqs"))
        used += _int(entry.get("num_used_tokens"))
        total += _int(entry.get("max_total_num_tokens"))
    return LoadReport(running, waiting, used, total)
