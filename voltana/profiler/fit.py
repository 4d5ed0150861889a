"""From iteration records to a predictor profile: EcoPred's own features and fitting code
(:func:`voltana.core.predictor.prefill_attention_work`, :func:`voltana.core.profile.fit_phase`), and the
held-out error of every fit (MAPE per clock and phase)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voltana.core.errors import VoltanaError
from voltana.core.predictor import prefill_attention_work
from voltana.core.profile import PhaseFit, Profile, Sample, fit_phase
from voltana.core.types import Phase

HOLDOUT_EVERY = 5
"""Every fifth sample (in record order) is held out to measure the fit's error."""


class FitError(VoltanaError, ValueError):
    """The records cannot give a profile (no energy, a clock without samples); one line."""


def sample_of(record: Mapping[str, Any], phase: Phase) -> Sample | None:
    """The EcoPred sample of a wire record of ``phase``, or None when it does not belong to that phase
    (another phase, a decode step that is not one token per request, no energy, no latency)."""
    if record.get("phase") != phase.value or record.get("energy_j") is None or record["latency_s"] <= 0:
        return None
    batch, new, context = int(record["batch_size"]), int(record["new_tokens"]), int(record["context_tokens"])
    if batch <= 0 or new <= 0:
        return None
    if phase is Phase.DECODE:
        if new != batch:
            return None
        x0, x1 = float(batch), float(context)
    else:
        x0, x1 = float(new), prefill_attention_work(float(new), float(context), batch)
    return Sample(x0, x1, int(record["clock_mhz"]), float(record["latency_s"]), float(record["energy_j"]))


def samples_of(records: Iterable[Mapping[str, Any]], phase: Phase, clocks_mhz: Sequence[int]) -> list[Sample]:
    """Samples of ``phase`` whose clock (read back) is one of ``clocks_mhz``."""
    wanted = set(clocks_mhz)
    out = []
    for record in records:
        sample = sample_of(record, phase)
        if sample is not None and sample.clock_mhz in wanted:
            out.append(sample)
    return out


def predict(fit: PhaseFit, target: str, clock_index: int, x0: float, x1: float) -> float:
    """The fitted ``target`` (``latency_s`` | ``energy_j``) of one batch at ``clocks[clock_index]``."""
    c0, c1, c2 = fit.tables[target][fit.segment_of(x0)][clock_index]
    return c0 * x0 + c1 * x1 + c2


@dataclass(frozen=True, slots=True)
class ClockQuality:
    """Held-out error of one clock's fits (MAPE, fraction) and the samples behind it."""

    clock_mhz: int
    samples: int
    held_out: int
    latency_mape: float | None
    energy_mape: float | None

    def to_json(self) -> dict[str, Any]:
        def short(v: float | None) -> float | None:
            return None if v is None else round(v, 5)

        return {
            "clock_mhz": self.clock_mhz,
            "samples": self.samples,
            "held_out": self.held_out,
            "latency_mape": short(self.latency_mape),
            "energy_mape": short(self.energy_mape),
        }


def _mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.mean(np.abs(predicted - measured) / np.maximum(np.abs(measured), 1e-12)))


def held_out_quality(
    samples: Sequence[Sample], clocks_mhz: Sequence[int], segment_ends: Sequence[int]
) -> list[ClockQuality]:
    """Fit on 4/5 of the samples, measure MAPE on the other 1/5, per clock."""
    train = [s for i, s in enumerate(samples) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    test = [s for i, s in enumerate(samples) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    fit = fit_phase(train, clocks_mhz, segment_ends) if train else None
    quality = []
    for index, clock in enumerate(clocks_mhz):
        mine = [s for s in test if s.clock_mhz == clock]
        total = sum(1 for s in samples if s.clock_mhz == clock)
        if fit is None or not mine:
            quality.append(ClockQuality(clock, total, 0, None, None))
            continue
        errors = []
        for target in ("latency_s", "energy_j"):
            predicted = np.array([predict(fit, target, index, s.x0, s.x1) for s in mine])
            measured = np.array([getattr(s, target) for s in mine])
            errors.append(_mape(predicted, measured))
        quality.append(ClockQuality(clock, total, len(mine), errors[0], errors[1]))
    return quality


def fit_records(
    records: Sequence[Mapping[str, Any]],
    phase: Phase,
    clocks_mhz: Sequence[int],
    segment_ends: Sequence[int],
) -> tuple[PhaseFit, list[ClockQuality]]:
    """The phase's fit on every sample and its held-out quality; raises :class:`FitError` (one line)."""
    samples = samples_of(records, phase, clocks_mhz)
    if not samples:
        has_phase = any(r.get("phase") == phase.value for r in records)
        why = "the engine reports no measured energy" if has_phase else "no iteration of this phase was seen"
        raise FitError(f"{phase.value}: no usable iteration records ({why})")
    missing = sorted(set(clocks_mhz) - {s.clock_mhz for s in samples})
    if missing:
        raise FitError(f"{phase.value}: no iteration ran at {missing} MHz (clock read back differs?)")
    try:
        fit = fit_phase(samples, clocks_mhz, segment_ends)
    except ValueError as exc:
        raise FitError(f"{phase.value}: {exc}") from None
    return fit, held_out_quality(samples, clocks_mhz, segment_ends)


def build_profile(
    fits: Mapping[Phase, PhaseFit], clocks_mhz: Sequence[int], source: str, metadata: Mapping[str, Any]
) -> Profile:
    """The versioned profile of the fitted phases (see :mod:`voltana.core.profile`)."""
    return Profile(tuple(sorted(clocks_mhz)), dict(fits), source, dict(metadata))
