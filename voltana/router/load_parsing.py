"""Turning an engine's load report into numbers: vLLM's Prometheus ``/metrics`` and SGLang's ``/v1/loads``.

Pure functions (no I/O) so they are tested on captured text. Values of several engines/DP ranks are summed.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, then pre-0.10 name
VLLM_CACHE_INFO = "vllm:cache_config_info"
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One poll's view of an instance: requests running/waiting, KV tokens used and the KV capacity."""

    num_running: int = 0
    num_waiting: int = 0
    kv_tokens: int = 0
    kv_capacity_tokens: int = 0


def _sample(line: str) -> tuple[str, str, float] | None:
    """(name, labels text, value) of one exposition line, or None for comments and junk."""
    if not line or line[0] == "#":
        return None
    brace = line.find("{")
    if brace >= 0:
        close = line.rfind("}")
        name, labels, rest = line[:brace], line[brace + 1 : close], line[close + 1 :]
    else:
        name, _, rest = line.partition(" ")
        labels = ""
    parts = rest.split()
    if not parts:
        return None
    try:
        return name, labels, float(parts[0])
    except ValueError:
        return None


def parse_vllm_metrics(text: str) -> LoadReport:
    """Read running/waiting requests and KV usage from vLLM's Prometheus text.

    KV tokens = usage fraction x capacity, capacity = ``num_gpu_blocks x block_size`` from
    ``vllm:cache_config_info`` labels (0 when vLLM does not expose it). Usage fractions of several engines are
    averaged, counts summed.
    """
    running = waiting = 0.0
    usages: list[float] = []
    capacity = 0
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        sample = _sample(line)
        if sample is None:
            continue
        name, labels, value = sample
        if name == VLLM_RUNNING:
            running += value
        elif name == VLLM_WAITING:
            waiting += value
        elif name in VLLM_KV_USAGE:
            usages.append(value)
        elif name == VLLM_CACHE_INFO:
            found = dict(_LABEL.findall(labels))
            with contextlib.suppress(KeyError, ValueError):
                capacity += int(found["num_gpu_blocks"]) * int(found["block_size"])
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
