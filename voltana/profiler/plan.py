"""The load the profiler sends at each clock: batches shaped to cover the grid EcoPred fits.

Prefill (features: tokens in the batch, attention work): per prefill segment of
:data:`~voltana.plugins.ecofreq.factory.PREFILL_SEGMENT_ENDS`, batches of 1 and 4 prompts totalling a spread
of token counts, each sent as one request with ``max_tokens=1``. Decode (features: batch size, KV tokens): per
batch-size segment (the engine's CUDA-graph capture sizes), batches at a spread of sizes with short and long
prompts, each generating :data:`DECODE_STEPS` tokens, so every decode step of the batch is a sample at a
growing KV size. ``coarse`` halves the spread (``--budget-minutes`` when time is short). Prompts are random
token ids from a seed per shape, the same in every run (a resumed run sends what a run in one go sends).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voltana.core.types import Phase
from voltana.plugins.ecofreq.factory import PREFILL_SEGMENT_ENDS

DECODE_STEPS = 16
"""Tokens each decode-shape request generates (= decode iterations per shape)."""
DEFAULT_DECODE_SEGMENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Decode segments when the engine reports no capture sizes (eager mode, CPU)."""
PREFILL_BATCHES = (1, 4)
DECODE_PROMPT_TOKENS = (16, 256, 1024, 4096)
MAX_DECODE_KV_TOKENS = 262_144
"""Largest KV footprint of one decode shape (batch x prompt): a bigger one spends minutes prefilling its
prompts for 16 decode steps. Decode latency is linear in KV tokens, so the fit extends beyond it."""
MAX_BATCH_TOKENS = 8192
"""Largest prefill batch (tokens) sent: vLLM's default ``max_num_batched_tokens`` with chunked prefill."""
TOKEN_ID_RANGE = (10, 256)
"""Prompt token ids are drawn from here: valid ids for any vocabulary of 256+ tokens (random prompts of
these ids still share no prefix-cache block: 246^16 first blocks)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """One batch of load: ``batch_size`` prompts of ``prompt_tokens`` tokens, ``max_tokens`` each."""

    phase: Phase
    batch_size: int
    prompt_tokens: int
    max_tokens: int

    def prompts(self, seed: int) -> list[list[int]]:
        """The batch's token-id prompts (deterministic in ``seed`` and the shape)."""
        rng = np.random.default_rng([seed, self.batch_size, self.prompt_tokens, self.max_tokens])
        ids = rng.integers(*TOKEN_ID_RANGE, size=(self.batch_size, self.prompt_tokens))
        return [[int(t) for t in row] for row in ids]

    def to_json(self) -> list[int | str]:
        return [self.phase.value, self.batch_size, self.prompt_tokens, self.max_tokens]

    @classmethod
    def from_json(cls, doc: Sequence[int | str]) -> Shape:
        return cls(Phase(str(doc[0])), int(doc[1]), int(doc[2]), int(doc[3]))


def _spread(lo: int, hi: int, count: int) -> list[int]:
    """Up to ``count`` integers evenly spread over ``(lo, hi]``."""
    return sorted({max(lo + 1, round(lo + (hi - lo) * (i + 1) / count)) for i in range(count)})


def prefill_shapes(max_prompt_tokens: int, coarse: bool = False) -> list[Shape]:
    """Prefill batches covering every prefill segment up to ``max_prompt_tokens`` per prompt."""
    cap = min(MAX_BATCH_TOKENS, max_prompt_tokens * max(PREFILL_BATCHES))
    shapes: list[Shape] = []
    previous = 0
    for end in PREFILL_SEGMENT_ENDS:
        if previous >= cap:
            break
        for total in _spread(previous, min(end, cap), 2 if coarse else 4):
            for batch in PREFILL_BATCHES:
                per_prompt = total // batch
                if 2 <= per_prompt <= max_prompt_tokens:
                    shapes.append(Shape(Phase.PREFILL, batch, per_prompt, 1))
        previous = end
    return sorted(set(shapes), key=lambda s: (s.batch_size * s.prompt_tokens, s.batch_size))


def decode_shapes(
    segment_ends: Sequence[int],
    max_model_len: int,
    kv_capacity_tokens: int,
    max_batch: int,
    coarse: bool = False,
) -> list[Shape]:
    """Decode batches covering every batch-size segment up to ``max_batch`` with short and long contexts."""
    shapes: list[Shape] = []
    previous = 0
    longest = max(2, max_model_len - DECODE_STEPS - 1)
    prompt_levels = sorted({min(p, longest) for p in DECODE_PROMPT_TOKENS})
    if coarse:
        prompt_levels = sorted({prompt_levels[0], prompt_levels[-1]})
    for end in segment_ends:
        if previous >= max_batch:
            break
        for batch in _spread(previous, min(end, max_batch), 1 if coarse else 2):
            for prompt in prompt_levels:
                footprint = batch * (prompt + DECODE_STEPS)
                limit = min(MAX_DECODE_KV_TOKENS, kv_capacity_tokens or MAX_DECODE_KV_TOKENS)
                if footprint > limit:
                    continue
                shapes.append(Shape(Phase.DECODE, batch, prompt, DECODE_STEPS))
        previous = end
    return shapes


def decode_segments(capture_sizes: Sequence[int]) -> tuple[int, ...]:
    """The decode segment ends EcoPred uses on this engine (its capture sizes, else a default ladder)."""
    return tuple(sorted(set(capture_sizes))) or DEFAULT_DECODE_SEGMENTS


def spread_clocks(clocks: Sequence[int], count: int) -> tuple[int, ...]:
    """``count`` of ``clocks`` (ascending), evenly spread, always with the lowest and highest."""
    ordered = sorted(set(clocks))
    if count >= len(ordered):
        return tuple(ordered)
    count = max(2, count)
    return tuple(sorted({ordered[round(i * (len(ordered) - 1) / (count - 1))] for i in range(count)}))
