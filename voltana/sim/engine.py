"""The serving engine the simulator models: running-request cap and context length, from engine defaults.

Decode admission in a real engine is bounded twice: a cap on running requests and the KV cache. The cap's
default depends on the engine, the GPU and the model:

- vLLM (``vllm/engine/arg_utils.py``, ``EngineArgs.get_batch_defaults``, v0.10-v0.11): ``max_num_seqs`` is
  1024 on GPUs with at least 70 GiB of memory whose name does not contain "a100" (H100, H200, MI300X) and 256
  otherwise (A100 is excluded on purpose: larger batches lowered its throughput, vLLM PR #17885). Requests
  whose prompt plus ``max_tokens`` exceed ``max_model_len`` (default: the model's context length) are answered
  with HTTP 400 before any compute (``vllm/entrypoints/openai/serving_engine.py``, ``_validate_input``).
- SGLang (``python/sglang/srt/managers/scheduler.py`` and ``model_executor/model_runner.py``, v0.4-v0.5):
  ``max_running_requests = min(max_total_num_tokens // 2, req_to_token_pool_size)`` with the pool sized
  ``clamp(max_total_num_tokens / context_len * 512, 2048, 4096)``: a bound from the KV capacity rather than a
  fixed number. It rejects requests longer than ``min(context_len, max_total_num_tokens) - 1`` tokens.

Both engines answer a request that can never fit with an error, and neither truncates: the simulator rejects
such requests at arrival (no prefill, no energy) and counts them (see :class:`EngineLimits`). The KV capacity
itself is the performance model's (``gpu_memory_utilization`` 0.9 for both engines, an approximation for
SGLang's ``mem_fraction_static``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from voltana.core.errors import VoltanaError

Engine = Literal["vllm", "sglang"]
ENGINES: tuple[str, ...] = ("vllm", "sglang")
DEFAULT_ENGINE: Engine = "vllm"

VLLM_MAX_NUM_SEQS_LARGE_GPU = 1024
"""vLLM ``max_num_seqs`` default on >= 70 GiB GPUs other than A100 (``EngineArgs.get_batch_defaults``)."""
VLLM_MAX_NUM_SEQS = 256
"""vLLM ``max_num_seqs`` default elsewhere (A100 included)."""
VLLM_LARGE_GPU_BYTES = 70 * 2**30
"""The memory threshold of vLLM's large-GPU defaults (70 GiB)."""
SGLANG_POOL_MIN_REQUESTS = 2048
SGLANG_POOL_MAX_REQUESTS = 4096
SGLANG_POOL_REQUESTS_PER_CONTEXT = 512
"""SGLang's request pool: ``clamp(kv_tokens / context_len * 512, 2048, 4096)`` (``model_runner.py``)."""


class EngineConfigError(VoltanaError, ValueError):
    """An engine setting the user must fix; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """What bounds one decode instance: ``max_running`` requests, ``max_model_len`` tokens per request
    (prompt + output), ``kv_capacity_tokens`` KV-cache tokens. A request is admitted to the running batch
    only while fewer than ``max_running`` run and its prompt + output fit the free KV cache."""

    engine: str
    max_running: int
    max_model_len: int
    kv_capacity_tokens: int

    def over_context(self, input_tokens: int, output_tokens: int) -> bool:
        """True when the engine refuses the request for its length: vLLM's check, prompt >= max_model_len or
        prompt + max_tokens > max_model_len (the simulator's ``max_tokens`` is the request's output, as
        ``vllm bench serve`` sends it)."""
        return input_tokens >= self.max_model_len or input_tokens + output_tokens > self.max_model_len

    def over_kv(self, input_tokens: int, output_tokens: int) -> bool:
        """True when prompt + output exceed a whole decode instance's KV cache: it could never be admitted."""
        return input_tokens + output_tokens > self.kv_capacity_tokens


def default_max_running(engine: str, model: Any, kv_capacity_tokens: int, max_model_len: int) -> int:
    """The engine's default running-request cap on ``model`` (a ``PerformanceModel``); see module docstring.

    Raises :class:`EngineConfigError` for an unknown engine.
    """
    if engine == "vllm":
        gpu = model.gpu
        large = gpu.hbm_capacity_bytes >= VLLM_LARGE_GPU_BYTES and "a100" not in gpu.name.lower()
        return VLLM_MAX_NUM_SEQS_LARGE_GPU if large else VLLM_MAX_NUM_SEQS
    if engine == "sglang":
        pool = int(kv_capacity_tokens / max(1, max_model_len) * SGLANG_POOL_REQUESTS_PER_CONTEXT)
        pool = min(max(pool, SGLANG_POOL_MIN_REQUESTS), SGLANG_POOL_MAX_REQUESTS)
        return max(1, min(kv_capacity_tokens // 2, pool))
    raise EngineConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def engine_limits(
    engine: str,
    model: Any,
    max_running: int | None = None,
    max_model_len: int | None = None,
    kv_capacity_tokens: int | None = None,
) -> EngineLimits:
    """Resolve the limits of ``engine`` serving ``model``: each ``None`` takes the engine's default
    (``max_model_len``: the model's context length; KV capacity: the performance model's).

    Raises :class:`EngineConfigError` for an unknown engine or a limit below 1.
    """
    context = int(max_model_len) if max_model_len is not None else int(model.model.context_tokens)
    capacity = int(kv_capacity_tokens) if kv_capacity_tokens is not None else int(model.kv_capacity_tokens)
    if context < 2:
        raise EngineConfigError(f"max model length must be at least 2 tokens, got {context}")
    if capacity < 1:
        raise EngineConfigError(f"{model.name}: no KV-cache capacity left (weights do not leave room)")
    running = (
        int(max_running) if max_running is not None else default_max_running(engine, model, capacity, context)
    )
    if engine not in ENGINES:
        raise EngineConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if running < 1:
        raise EngineConfigError(f"max running requests must be at least 1, got {running}")
    return EngineLimits(engine, running, context, capacity)


def compose_prefill(remaining_tokens: Iterable[int], budget: int) -> list[int]:
    """Chunked prefill: the chunk (prompt tokens) each request at the head of the FIFO waiting queue gets in
    the next prefill iteration, at most ``budget`` tokens in all.

    ``remaining_tokens`` are the prompt tokens each waiting request still has to compute, in queue
    order, read lazily (only as far as the iteration reaches). Requests are taken whole while they fit; the
    first one that does not fit gets what is left of the budget (it is split across iterations, as vLLM's
    ``max_num_batched_tokens`` and SGLang's ``chunked_prefill_size`` do) and ends the iteration. Returns
    one chunk size (>= 1) per request taken, in queue order: ``chunks[i] < remaining[i]`` only for the last.
    Empty for an empty queue or a budget below 1.
    """
    chunks: list[int] = []
    left = budget
    for remaining in remaining_tokens:
        if left <= 0:
            break
        chunk = remaining if remaining < left else left
        chunks.append(chunk)
        left -= chunk
        if chunk < remaining:
            break
    return chunks


def admit_decode(
    need_tokens: Iterable[int], running: int, kv_reserved: int, kv_capacity: int, max_running: int
) -> int:
    """How many requests at the head of a decode instance's FIFO admission queue join its running batch now.

    ``need_tokens`` are each waiting request's prompt + output tokens (the KV cache it holds when done), in
    queue order, read lazily. A request is admitted while fewer than ``max_running`` requests run and
    ``kv_reserved`` (the running requests' prompt + output) plus its need fit ``kv_capacity``; the first that
    does not fit stops admission (FIFO, no overtaking). Returns the count admitted, from 0 to
    ``max_running - running``.
    """
    admitted = 0
    for need in need_tokens:
        if running + admitted >= max_running or kv_reserved + need > kv_capacity:
            break
        kv_reserved += need
        admitted += 1
    return admitted
