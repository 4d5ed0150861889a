"""A debug recorder: one JSON line per iteration (what ran, what was decided, what was measured).

Enabled by ``engine.trace_path`` (``VOLTANA_ENGINE__TRACE_PATH``). Line-buffered so a reader sees every
finished iteration at once; costs one small write per iteration, so keep it off in production.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from voltana.adapters.status import RuntimeStatus
from voltana.core.types import IterationRecord


def iteration_to_dict(record: IterationRecord) -> dict[str, Any]:
    """The JSON form of one iteration: snapshot (requests as [id, new, context]), decision, measurement."""
    snap = record.snapshot
    decision = record.decision
    return {
        "instance_id": snap.instance_id,
        "iteration": snap.iteration,
        "phase": snap.phase.value,
        "now_s": snap.now_s,
        "batch_size": snap.batch_size,
        "num_new_tokens": snap.num_new_tokens,
        "num_context_tokens": snap.num_context_tokens,
        "requests": [[r.request_id, r.new_tokens, r.context_tokens] for r in snap.requests],
        "num_waiting": len(snap.waiting),
        "waiting_prompt_tokens": sum(q.prompt_tokens for q in snap.waiting),
        "clock_mhz": decision.clock_mhz,
        "reason": decision.reason.value,
        "policy": decision.policy,
        "predicted_latency_s": decision.predicted_latency_s,
        "applied_clock_mhz": record.applied_clock_mhz,
        "latency_s": record.latency_s,
        "energy_j": record.energy_j,
        "energy_source": record.energy_source.value,
    }


class IterationTrace:
    """Appends :func:`iteration_to_dict` lines (plus the runtime's hook time so far) to a file."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @classmethod
    def open(cls, path: str | Path) -> IterationTrace:
        """Open ``path`` for appending, line-buffered (raises OSError)."""
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        return cls(target.open("a", buffering=1, encoding="utf-8"))

    def __call__(self, record: IterationRecord, status: RuntimeStatus) -> None:
        line = iteration_to_dict(record)
        line["monitor_only"] = status.monitor_only
        line["hook_time_s"] = status.hook_time_s
        self._stream.write(json.dumps(line, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._stream.close()


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """All iterations recorded in ``path`` (for tests and benchmarks)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
