"""EcoPred: per-phase predictors of one iteration's latency (s) and energy (J) at every allowed clock.

Features (``x0``, ``x1``) per phase: prefill (tokens computed in the batch, and their causal-attention work,
which grows with context tokens already cached by chunked prefill and with the prompt length), decode
(batch size, KV tokens read = sum of context lengths). Decode fits
are split into batch-size segments (default: the engine's CUDA-graph capture sizes, where latency steps).
Each predictor is built on the controller's allowed clocks (profiled clocks interpolated in 1/f) and then
adapts online from measured iterations (:class:`voltana.core.rls.ClockwiseRls`). It reports its recent
error (MAPE) and the feature range it has seen, so policies can stop trusting it.
"""

from __future__ import annotations

import bisect
import math
from bisect import bisect_left as _bisect_left
from collections.abc import Sequence
from typing import Self

from voltana.core.profile import Profile, Target
from voltana.core.rls import AdaptationSettings, ClockwiseRls
from voltana.core.types import BatchSnapshot, Phase

_SIZE_TABLE_LIMIT = 4096
"""Batch sizes up to this have their segment tabled (decode segment ends are capture sizes, <= 1024)."""

SEEN_RANGE_SLACK = 1.25
"""A batch up to this factor beyond the largest profiled or observed features still counts as seen."""


def prefill_attention_work(num_new_tokens: float, num_context_tokens: float, batch_size: int) -> float:
    """Causal-attention token pairs of a prefill batch from its aggregates: ``n * (c + n / 2) / batch_size``.

    Exact when the batch's requests are alike; it carries the context of chunked prefill and the quadratic
    cost of long prompts into a feature the linear model can use.
    """
    return num_new_tokens * (num_context_tokens + 0.5 * num_new_tokens) / max(batch_size, 1)


def features(snapshot: BatchSnapshot) -> tuple[float, float]:
    """(x0, x1) of an iteration: prefill (new tokens, attention work); decode (batch size, KV tokens)."""
    if snapshot.phase is Phase.PREFILL:
        n = float(snapshot.num_new_tokens)
        return n, prefill_attention_work(n, float(snapshot.num_context_tokens), len(snapshot.requests))
    return float(len(snapshot.requests)), float(snapshot.num_context_tokens)


class ClockTable:
    """One phase's per-(segment, clock) model of one target on a fixed ascending clock grid.

    Invariant: ``clocks_mhz`` is ascending and every prediction list is in that order.
    """

    target: Target = "latency_s"

    def __init__(
        self,
        phase: Phase,
        clocks_mhz: Sequence[int],
        segment_ends: Sequence[int],
        model: ClockwiseRls,
        max_x0: float,
        max_x1: float,
    ) -> None:
        clocks = tuple(int(c) for c in clocks_mhz)
        if not clocks or list(clocks) != sorted(set(clocks)):
            raise ValueError(f"clocks_mhz must be non-empty, ascending and distinct, got {clocks}")
        if len(segment_ends) != model.num_segments or any(len(seg) != len(clocks) for seg in model.rows):
            raise ValueError("model table shape must be [len(segment_ends)][len(clocks_mhz)]")
        self.phase = phase
        self.clocks_mhz = clocks
        self.segment_ends = tuple(int(e) for e in segment_ends)
        self.model = model
        self.max_x0 = float(max_x0)
        self.max_x1 = float(max_x1)
        self._index = {c: i for i, c in enumerate(clocks)}
        self._last_segment = last = len(self.segment_ends) - 1
        # segment_of(size) for the integer sizes a batch-size search probes (a list lookup, not a bisect).
        self._segment_by_size = [
            min(_bisect_left(self.segment_ends, size), last)
            for size in range(min(self.segment_ends[-1], _SIZE_TABLE_LIMIT) + 1)
        ]

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        phase: Phase,
        clocks_mhz: Sequence[int],
        settings: AdaptationSettings | None = None,
    ) -> Self:
        """Seed from ``profile``'s fits of ``phase``, re-sampled onto ``clocks_mhz``."""
        if phase not in profile.phases:
            raise ValueError(f"profile has no {phase.value} fits")
        fit = profile.phases[phase]
        table = profile.coefficients_on(phase, cls.target, clocks_mhz)
        x0_scale, x1_scale = max(fit.max_x0, 1.0), max(fit.max_x1, 1.0)
        typical = [seg[-1][0] * x0_scale + seg[-1][1] * x1_scale + seg[-1][2] for seg in table]
        model = ClockwiseRls(table, (x0_scale, x1_scale), max(*typical, 1e-9), settings)
        return cls(phase, clocks_mhz, fit.segment_ends, model, fit.max_x0, fit.max_x1)

    def segment_of(self, x0: float) -> int:
        """Segment index for feature ``x0`` (tokens for prefill, batch size for decode)."""
        index = _bisect_left(self.segment_ends, x0)
        last = self._last_segment
        return last if last < index else index

    def clock_index(self, clock_mhz: int) -> int:
        """Index of ``clock_mhz`` in the grid, or of the nearest grid clock."""
        idx = self._index.get(clock_mhz)
        if idx is not None:
            return idx
        return min(range(len(self.clocks_mhz)), key=lambda i: abs(self.clocks_mhz[i] - clock_mhz))

    def values(self, x0: float, x1: float) -> list[float]:
        """Predictions at every grid clock (ascending clocks)."""
        segment = _bisect_left(self.segment_ends, x0)  # segment_of(x0), inlined (twice per decision)
        last = self._last_segment
        return self.model.predict_all(last if last < segment else segment, x0, x1)

    def batch_value(self, clock_index: int, x1_per_x0: float, x0: float) -> float:
        """The prediction at grid clock ``clock_index`` for a decode batch of ``x0`` alike requests reading
        ``x1_per_x0`` KV tokens each: the same float as ``model.predict(segment_of(x0), clock_index, x0,
        x0 * x1_per_x0)``."""
        segment = _bisect_left(self.segment_ends, x0)  # segment_of(x0), inlined (every decode decision)
        last = self._last_segment
        model = self.model
        g0, g1, g2 = model.gains
        r0, r1, r2 = model.rows[last if last < segment else segment][clock_index]
        return model.drift * (g0 * r0 * x0 + g1 * r1 * (x0 * x1_per_x0) + g2 * r2)

    def largest_batch(
        self, clock_index: int, x1_per_x0: float, top: int, bound: float, enough_tps: float = math.inf
    ) -> int:
        """The largest batch size in ``[0, top]`` whose prediction at grid clock ``clock_index`` (the batch
        reading ``x1_per_x0`` KV tokens per request, as :meth:`batch_value`) is within ``bound``; 0 when not
        even one request fits. A binary search, as the prediction grows with the batch within a segment.

        Evaluates exactly the floats of ``batch_value(clock_index, x1_per_x0, size)`` at each probed size,
        inline: the decode load rule runs it for every clock it checks, every iteration.

        ``enough_tps``: the search stops at the first size ``b`` it finds within the bound with
        ``b / bound >= enough_tps`` and returns ``b``, for a caller that only asks whether the largest batch
        ``lo`` carries ``enough_tps`` (tokens/s): ``lo >= b`` and ``prediction(lo) <= bound``, so
        ``lo / prediction(lo) >= b / bound`` (one probe instead of a dozen under a light load).
        """
        rows = self.model.rows
        by_size = self._segment_by_size
        tabled = len(by_size)
        d = self.model.drift
        g0, g1, g2 = self.model.gains
        lo, hi = 0, top
        while lo < hi:
            mid = (lo + hi + 1) // 2
            x0 = float(mid)
            segment = by_size[mid] if mid < tabled else self.segment_of(x0)
            r0, r1, r2 = rows[segment][clock_index]
            if d * (g0 * r0 * x0 + g1 * r1 * (x0 * x1_per_x0) + g2 * r2) <= bound:
                lo = mid
                if x0 / bound >= enough_tps:
                    break
            else:
                hi = mid - 1
        return lo

    def value_at(self, x0: float, x1: float, clock_mhz: int) -> float:
        """Prediction at any clock: grid clocks directly, others interpolated linearly in 1/f."""
        segment = self.segment_of(x0)
        idx = self._index.get(clock_mhz)
        if idx is not None or len(self.clocks_mhz) == 1:
            return self.model.predict(segment, 0 if idx is None else idx, x0, x1)
        clocks = self.clocks_mhz
        hi = min(max(bisect.bisect_left(clocks, clock_mhz), 1), len(clocks) - 1)
        lo = hi - 1
        w = (1.0 / clock_mhz - 1.0 / clocks[lo]) / (1.0 / clocks[hi] - 1.0 / clocks[lo])
        lo_v = self.model.predict(segment, lo, x0, x1)
        hi_v = self.model.predict(segment, hi, x0, x1)
        return max(0.0, (1.0 - w) * lo_v + w * hi_v)

    def observe(self, x0: float, x1: float, clock_mhz: int, measured: float) -> bool:
        """Learn from one measured iteration at ``clock_mhz``; False when rejected (outlier or invalid)."""
        if not math.isfinite(measured) or measured <= 0.0:
            return False
        index = self._index.get(clock_mhz)
        if index is None:
            index = self.clock_index(clock_mhz)
        segment = _bisect_left(self.segment_ends, x0)  # segment_of(x0), inlined (every iteration)
        last = self._last_segment
        accepted = self.model.update(last if last < segment else segment, index, x0, x1, measured)
        if accepted:  # max() spelt out (as it compares, NaN included), without its call
            if x0 > self.max_x0:  # noqa: PLR1730
                self.max_x0 = x0
            if x1 > self.max_x1:  # noqa: PLR1730
                self.max_x1 = x1
        return accepted

    def covers(self, x0: float, x1: float) -> bool:
        """Whether (x0, x1) lies within the profiled/observed range (with :data:`SEEN_RANGE_SLACK`)."""
        return x0 <= self.max_x0 * SEEN_RANGE_SLACK and x1 <= self.max_x1 * SEEN_RANGE_SLACK

    def recent_mape(self) -> float:
        """Rolling MAPE of a-priori predictions (fraction; NaN before any observation)."""
        return self.model.recent_mape()

    @property
    def num_observations(self) -> int:
        """Measurements seen (accepted or not)."""
        return self.model.num_observations


class LatencyPredictor(ClockTable):
    """EcoPred latency model of one phase; satisfies :class:`voltana.core.contexts.LatencyModel`."""

    target: Target = "latency_s"

    def predict_latency_s(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        """Predicted duration of the iteration in ``snapshot`` at ``clock_mhz`` (s)."""
        x0, x1 = features(snapshot)
        return self.value_at(x0, x1, clock_mhz)

    def latencies_s(self, snapshot: BatchSnapshot) -> list[float]:
        """Predicted iteration duration at every grid clock (s, ascending clocks)."""
        x0, x1 = features(snapshot)
        return self.model.predict_all(self.segment_of(x0), x0, x1)

    def predict_prefill_s(self, tokens: int, token_budget: int, clock_mhz: int) -> float:
        """Predicted time to prefill ``tokens`` prompt tokens alone, ``token_budget`` per iteration (s).

        Equals the sum of :meth:`predict_latency_s` over the chunks (chunk ``i`` computes ``token_budget``
        tokens over ``i * token_budget`` cached ones) in O(1) instead of one prediction per chunk: full
        chunks share ``x0`` (so one segment) and within a segment a prediction is affine in ``x1``, so their
        sum is their count times the prediction at their mean ``x1``. Exact (up to rounding) for clocks
        within the grid; clocks outside it, where interpolation may clamp at 0, are summed chunk by chunk.
        """
        budget = max(1, int(token_budget))
        full, rest = divmod(max(0, int(tokens)), budget)
        b = float(budget)
        if not self.clocks_mhz[0] <= clock_mhz <= self.clocks_mhz[-1]:
            return sum(
                self.value_at(x0, prefill_attention_work(x0, i * b, 1), clock_mhz)
                for i, x0 in enumerate([b] * full + ([float(rest)] if rest else []))
            )
        total = 0.0
        if full:
            mean_x1 = prefill_attention_work(b, b * (full - 1) / 2.0, 1)  # mean of b * (i * b + b / 2)
            total += full * self.value_at(b, mean_x1, clock_mhz)
        if rest:
            r = float(rest)
            total += self.value_at(r, prefill_attention_work(r, full * b, 1), clock_mhz)
        return total

    def observe_iteration(self, snapshot: BatchSnapshot, clock_mhz: int, latency_s: float) -> bool:
        """Learn from a measured iteration duration (s) at the applied clock."""
        x0, x1 = features(snapshot)
        return self.observe(x0, x1, clock_mhz, latency_s)


class EnergyPredictor(ClockTable):
    """Energy model of one phase (J per iteration, whole instance), learnt and seeded like latency."""

    target: Target = "energy_j"

    def predict_energy_j(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        """Predicted energy of the iteration in ``snapshot`` at ``clock_mhz`` (J)."""
        x0, x1 = features(snapshot)
        return self.value_at(x0, x1, clock_mhz)

    def energies_j(self, snapshot: BatchSnapshot) -> list[float]:
        """Predicted iteration energy at every grid clock (J, ascending clocks)."""
        x0, x1 = features(snapshot)
        return self.model.predict_all(self.segment_of(x0), x0, x1)

    def observe_iteration(self, snapshot: BatchSnapshot, clock_mhz: int, energy_j: float) -> bool:
        """Learn from a measured iteration energy (J) at the applied clock."""
        x0, x1 = features(snapshot)
        return self.observe(x0, x1, clock_mhz, energy_j)
