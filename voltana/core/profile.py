"""Predictor profiles: per-phase, per-segment, per-clock linear fits of iteration latency and energy.

A profile is a small versioned JSON file written by ``voltana profile`` (or built in memory from the
simulated GPU) and read to seed :mod:`voltana.core.predictor`. Features per phase (``x0``, ``x1``):
prefill (tokens computed, attention work: see ``prefill_attention_work``), decode (batch size, KV tokens).
Every fit is ``value = c0 * x0 + c1 * x1 + c2`` with non-negative coefficients, one per (segment, clock);
segments split ``x0`` at inclusive ``segment_ends``. Clocks between profiled ones are interpolated linearly
in the clock period (1/f): exact for the compute-bound share of the work, flat for the memory-bound share.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voltana.core.errors import VoltanaError
from voltana.core.files import write_text_atomically
from voltana.core.types import Phase

PROFILE_FORMAT = "voltana-predictor-profile"
PROFILE_VERSION = 1
FEATURE_NAMES: dict[Phase, tuple[str, str]] = {
    Phase.PREFILL: ("num_new_tokens", "attention_work"),
    Phase.DECODE: ("batch_size", "kv_tokens"),
}
Target = Literal["latency_s", "energy_j"]
TARGETS: tuple[Target, Target] = ("latency_s", "energy_j")
Table = tuple[tuple[tuple[float, float, float], ...], ...]
"""``table[segment][clock] = (c0, c1, c2)``."""


class ProfileError(VoltanaError, ValueError):
    """A profile file that cannot be used; ``str()`` is one line naming the file and the problem."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One profiled iteration: features, clock, measured latency (s) and energy (J)."""

    x0: float
    x1: float
    clock_mhz: int
    latency_s: float
    energy_j: float


@dataclass(frozen=True, slots=True)
class PhaseFit:
    """The fits of one phase: ``tables[target][segment][clock]``, and the feature range they cover."""

    segment_ends: tuple[int, ...]
    tables: Mapping[str, Table]
    max_x0: float
    max_x1: float

    def segment_of(self, x0: float) -> int:
        """Index of the segment whose inclusive end is the first >= ``x0`` (the last one beyond)."""
        return min(bisect.bisect_left(self.segment_ends, x0), len(self.segment_ends) - 1)


@dataclass(frozen=True, slots=True)
class Profile:
    """Fits for both phases at ``clocks_mhz`` (ascending), and a note of where they came from."""

    clocks_mhz: tuple[int, ...]
    phases: Mapping[Phase, PhaseFit]
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def coefficients_on(self, phase: Phase, target: Target, clocks_mhz: Sequence[int]) -> Table:
        """The ``target`` table of ``phase`` re-sampled onto ``clocks_mhz`` (linear in 1/f, clamped >= 0)."""
        fit = self.phases[phase]
        table = fit.tables[target]
        return tuple(
            tuple(_interpolate_row(self.clocks_mhz, seg, clock) for clock in clocks_mhz) for seg in table
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON document (see :func:`save_profile`)."""
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "source": self.source,
            "metadata": dict(self.metadata),
            "clocks_mhz": list(self.clocks_mhz),
            "phases": {
                phase.value: {
                    "features": list(FEATURE_NAMES[phase]),
                    "segment_ends": list(fit.segment_ends),
                    "max_x0": fit.max_x0,
                    "max_x1": fit.max_x1,
                    **{
                        t: [[[_short(c) for c in row] for row in seg] for seg in fit.tables[t]]
                        for t in TARGETS
                    },
                }
                for phase, fit in self.phases.items()
            },
        }


def _short(value: float) -> float:
    """7 significant digits: far below the fits' error, and it keeps profile files small."""
    return float(f"{value:.7g}")


def _interpolate_row(
    clocks_mhz: Sequence[int], rows: Sequence[tuple[float, float, float]], clock_mhz: int
) -> tuple[float, float, float]:
    if len(clocks_mhz) == 1:
        return rows[0]
    hi = min(max(bisect.bisect_left(clocks_mhz, clock_mhz), 1), len(clocks_mhz) - 1)
    lo = hi - 1
    period, p_lo, p_hi = 1.0 / clock_mhz, 1.0 / clocks_mhz[lo], 1.0 / clocks_mhz[hi]
    w = (period - p_lo) / (p_hi - p_lo)
    a, b = rows[lo], rows[hi]
    c0, c1, c2 = (max(0.0, (1.0 - w) * a[i] + w * b[i]) for i in range(3))
    return c0, c1, c2


FIT_DIGITS = 10
"""Significant digits a fitted coefficient keeps (a profile's fits are good to a few percent)."""
FIT_ZERO = 1e-9
"""A scaled coefficient this small relative to the largest is rounding noise: zero."""


def fit_nonnegative(x0: np.ndarray, x1: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares ``y ~ c0*x0 + c1*x1 + c2`` with all coefficients >= 0 (small active-set loop).

    Columns are scaled before solving; a column that is constant within the samples is dropped (its
    effect lands in the intercept). The coefficients are quantised to ``FIT_DIGITS`` significant digits,
    a scaled one within ``FIT_ZERO`` of the largest being zero: LAPACK's least squares differ in their last
    bits between CPUs (the BLAS kernels are chosen per CPU), and the policies' choices near the edge of
    capacity follow those bits, so without it the same profile fitted on two machines could simulate
    differently (measured: changing the seeded coefficients by one part in 1e15 moved ecofreq+ecoroute's
    ITL attainment at the paper grid's Llama LMSYS 100 req/s between 95.7% and 96.0%).
    """
    columns = [x0, x1, np.ones_like(y)]
    active = [i for i in range(3) if i == 2 or float(np.ptp(columns[i])) > 0.0]
    while True:
        a = np.column_stack([columns[i] for i in active])
        scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
        solution, *_ = np.linalg.lstsq(a / scale, y, rcond=None)
        tiny = FIT_ZERO * float(np.abs(solution).max())
        coef = [
            0.0 if abs(float(s)) <= tiny else float(f"{float(s) / float(sc):.{FIT_DIGITS}g}")
            for s, sc in zip(solution, scale, strict=True)
        ]
        negative = [i for i, c in zip(active, coef, strict=True) if c < 0.0]
        if not negative:
            out = [0.0, 0.0, 0.0]
            for i, c in zip(active, coef, strict=True):
                out[i] = float(c)
            return out[0], out[1], out[2]
        worst = min(negative, key=lambda i: coef[active.index(i)])
        active.remove(worst)
        if not active:
            return 0.0, 0.0, 0.0


def fit_phase(samples: Sequence[Sample], clocks_mhz: Sequence[int], segment_ends: Sequence[int]) -> PhaseFit:
    """Fit every (segment, clock) of one phase from profiled samples; empty segments borrow a neighbour's."""
    ends = tuple(sorted(set(int(e) for e in segment_ends)))
    if not ends:
        raise ValueError("segment_ends must not be empty")
    if not samples:
        raise ValueError("no samples to fit")
    clock_index = {c: i for i, c in enumerate(clocks_mhz)}
    data = np.array([(s.x0, s.x1, s.latency_s, s.energy_j) for s in samples], dtype=float)
    seg = np.minimum(np.searchsorted(np.array(ends), data[:, 0], side="left"), len(ends) - 1)
    clock = np.array([clock_index[s.clock_mhz] for s in samples])
    tables: dict[str, Table] = {}
    for column, target in ((2, "latency_s"), (3, "energy_j")):
        per_segment: list[tuple[tuple[float, float, float], ...] | None] = []
        for s_idx in range(len(ends)):
            rows = []
            for c_idx in range(len(clocks_mhz)):
                mask = (seg == s_idx) & (clock == c_idx)
                if not mask.any():
                    break
                rows.append(fit_nonnegative(data[mask, 0], data[mask, 1], data[mask, column]))
            per_segment.append(tuple(rows) if len(rows) == len(clocks_mhz) else None)
        if all(t is None for t in per_segment):
            raise ValueError("no segment has samples at every clock")
        tables[target] = tuple(_fill_gaps(per_segment))
    return PhaseFit(ends, tables, float(data[:, 0].max()), float(data[:, 1].max()))


def _fill_gaps(
    per_segment: list[tuple[tuple[float, float, float], ...] | None],
) -> list[tuple[tuple[float, float, float], ...]]:
    filled = list(per_segment)
    known = [i for i, t in enumerate(filled) if t is not None]
    for i, t in enumerate(filled):
        if t is None:
            filled[i] = filled[min(known, key=lambda k: (abs(k - i), k))]
    return [t for t in filled if t is not None]


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` as JSON to ``path`` (parents created); returns the path.

    Atomic: written beside it and renamed into place, so an interrupted or failed write (Ctrl-C, a full disk)
    leaves the previous file, or none, never a truncated one. Raises ``OSError``."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(target, json.dumps(profile.to_json(), separators=(",", ":")) + "\n")
    return target


def load_profile(path: str | Path, allow_partial: bool = False) -> Profile:
    """Read and validate a profile; raises :class:`ProfileError` with one line on any problem, and on a
    partial profile (``metadata.complete`` false: ``voltana profile`` was interrupted; its clocks are only
    those finished, so predictors seeded from it would extrapolate the rest) unless ``allow_partial``."""
    source = Path(path).expanduser()
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"predictor profile not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"predictor profile {source} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"predictor profile {source} is not valid JSON (line {exc.lineno})") from None
    try:
        profile = profile_from_json(doc)
    except ProfileError as exc:
        raise ProfileError(f"predictor profile {source}: {exc}") from None
    if profile.metadata.get("complete") is False and not allow_partial:
        raise ProfileError(
            f"predictor profile {source} is partial (an interrupted `voltana profile`, clocks "
            f"{list(profile.clocks_mhz)} only): run the same profile command again to finish it"
        )
    return profile


def profile_from_json(doc: Any) -> Profile:
    """Validate a parsed profile document; raises :class:`ProfileError` naming the first problem."""
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"not a voltana predictor profile (expected format {PROFILE_FORMAT!r})")
    version = doc.get("version")
    if version != PROFILE_VERSION:
        raise ProfileError(
            f"unsupported profile version {version!r} (this voltana reads version {PROFILE_VERSION}); "
            "re-create it with `voltana profile`"
        )
    try:
        clocks = tuple(int(c) for c in doc["clocks_mhz"])
        if not clocks or list(clocks) != sorted(set(clocks)) or clocks[0] <= 0:
            raise ProfileError("clocks_mhz must be positive, ascending and distinct")
        phases: dict[Phase, PhaseFit] = {}
        for name, body in doc["phases"].items():
            phase = Phase(name)
            ends = tuple(int(e) for e in body["segment_ends"])
            tables: dict[str, Table] = {}
            for target in TARGETS:
                table = tuple(tuple(_row(r) for r in seg_rows) for seg_rows in body[target])
                if len(table) != len(ends) or any(len(seg) != len(clocks) for seg in table):
                    raise ProfileError(
                        f"{name}.{target} must be [segment][clock] of shape {len(ends)}x{len(clocks)}"
                    )
                tables[target] = table
            phases[phase] = PhaseFit(ends, tables, float(body["max_x0"]), float(body["max_x1"]))
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"garbled profile ({type(exc).__name__}: {exc})") from None
    if not phases:
        raise ProfileError("profile has no phases")
    return Profile(clocks, phases, str(doc.get("source", "")), dict(doc.get("metadata") or {}))


def _row(values: Sequence[Any]) -> tuple[float, float, float]:
    c0, c1, c2 = (float(v) for v in values)
    if not all(math.isfinite(c) and c >= 0.0 for c in (c0, c1, c2)):
        raise ProfileError("coefficients must be finite and non-negative")
    return c0, c1, c2
