"""Online recursive least squares over a (segment x clock) table of 3-coefficient linear models.

One table predicts one target (iteration latency in s, or iteration energy in J) of one phase:
``y ~= d * (g0 * r0 * x0 + g1 * r1 * x1 + g2 * r2)`` with base rows ``(r0, r1, r2) = rows[segment][clock]``,
shared per-term gains ``(g0, g1, g2)`` and a shared drift factor ``d``.

Adaptation has three levels, fast to slow, each learning what the previous one left:
- the drift ``d`` pulls towards ``measured / predicted`` with weight ``drift_rate`` on every observation: a
  uniform change (another GPU of the same kind, thermal throttling, a new driver) reaches every clock and
  batch size within a few iterations, even those the controller rarely visits;
- the gains are one 3-parameter RLS (relative errors) over every observation, whatever its segment and clock:
  a change in one term everywhere (KV reads that cost 4x more per token on a model with 4x the KV heads);
- each (segment, clock) row runs its own RLS for what is left (shape errors of the seed in one batch range or
  at one clock), more slowly (``row_covariance``).

Robustness: an observation whose relative residual exceeds ``max(outlier_floor, outlier_sigmas * spread)``
is rejected unless ``regime_change_after`` such observations arrive in a row (then it is a real change and is
learnt). Covariances stop growing at ``max_covariance`` (no wind-up while nothing new is observed), rows stay
non-negative (work never takes negative time or energy) and gains stay within ``gain_bounds``.

Everything is plain Python floats: at 3 coefficients and ~8 clocks that is faster than numpy calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Row = list[float]
_MIN_PREDICTION = 1e-9
_MAX_LOG_RATIO = 0.5
_MIN_RATIO, _MAX_RATIO = math.exp(-_MAX_LOG_RATIO), math.exp(_MAX_LOG_RATIO)


@dataclass(frozen=True, slots=True)
class AdaptationSettings:
    """Knobs of the online adaptation (all dimensionless)."""

    forgetting: float = 0.98
    """RLS forgetting factor of each row in (0, 1]: a row remembers ~``1 / (1 - forgetting)`` observations."""
    drift_rate: float = 0.2
    """Weight of one observation in the shared drift factor (0 disables it)."""
    gain_forgetting: float = 0.98
    """Forgetting factor of the shared gains (shorter memory: they carry fast, uniform changes)."""
    gain_covariance: float = 1.0
    """Initial RLS covariance of the shared gains (normalised units)."""
    row_covariance: float = 0.1
    """Initial RLS covariance of a seeded row (normalised units): larger trusts the seed less."""
    max_covariance: float = 10.0
    """Anti-wind-up bound on each covariance diagonal entry (normalised units)."""
    gain_bounds: tuple[float, float] = (0.05, 20.0)
    """Each shared gain stays within these bounds."""
    outlier_floor: float = 0.3
    """Relative residuals below this are never treated as outliers."""
    outlier_sigmas: float = 6.0
    """Outlier threshold in multiples of the recent spread of relative residuals."""
    regime_change_after: int = 3
    """This many outliers in a row are accepted as a real change of the ground truth."""
    mape_window: int = 64
    """Observations in the rolling mean absolute percentage error."""

    def __post_init__(self) -> None:
        for name in ("forgetting", "gain_forgetting"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if (
            not 0
            < min(self.gain_covariance, self.row_covariance)
            <= max(self.gain_covariance, self.row_covariance)
            <= self.max_covariance
        ):
            raise ValueError("need 0 < gain_covariance, row_covariance <= max_covariance")
        if not 0.0 <= self.drift_rate < 1.0:
            raise ValueError(f"drift_rate must be in [0, 1), got {self.drift_rate}")
        if not 0 < self.gain_bounds[0] <= 1.0 <= self.gain_bounds[1]:
            raise ValueError(f"gain_bounds must bracket 1.0, got {self.gain_bounds}")
        if self.mape_window < 1 or self.regime_change_after < 0:
            raise ValueError("mape_window must be >= 1 and regime_change_after >= 0")


def rls_step(
    t0: float,
    t1: float,
    t2: float,
    p: Row,
    u0: float,
    u1: float,
    u2: float,
    target: float,
    lam: float,
    cap: float,
) -> tuple[float, float, float]:
    """One RLS step with forgetting ``lam`` on the 3 parameters ``(t0, t1, t2)``: returns them updated and
    updates the covariance ``p`` (symmetric 3x3, row-major) in place.

    Numerically guarded: the covariance is updated symmetrically, is not inflated by ``1 / lam`` once a
    diagonal entry reaches ``cap`` (anti-wind-up in directions the data do not excite), and is reset to
    ``cap * 0.1 * I`` if rounding ever makes a diagonal entry non-positive.
    """
    # Hot path (two steps per observation): locals, and max()/min() of the diagonals spelt out (the same
    # comparisons in the same order as the builtins, NaN included, without their call overhead).
    p0, p1, p2, _, p4, p5, _, _, p8 = p
    error = target - (t0 * u0 + t1 * u1 + t2 * u2)
    pu0 = p0 * u0 + p1 * u1 + p2 * u2
    pu1 = p1 * u0 + p4 * u1 + p5 * u2
    pu2 = p2 * u0 + p5 * u1 + p8 * u2
    inv_denom = 1.0 / (lam + u0 * pu0 + u1 * pu1 + u2 * pu2)
    k0, k1, k2 = pu0 * inv_denom, pu1 * inv_denom, pu2 * inv_denom
    t0, t1, t2 = t0 + k0 * error, t1 + k1 * error, t2 + k2 * error
    top = p4 if p4 > p0 else p0  # max(p0, p4, p8)
    top = p8 if p8 > top else top
    inv = 1.0 / lam if top < cap else 1.0
    p00 = (p0 - k0 * pu0) * inv
    p11 = (p4 - k1 * pu1) * inv
    p22 = (p8 - k2 * pu2) * inv
    low = p11 if p11 < p00 else p00  # min(p00, p11, p22)
    low = p22 if p22 < low else low
    if low <= 0.0:
        p[:] = _identity(0.1 * cap)
        return t0, t1, t2
    p01 = (p1 - k0 * pu1) * inv
    p02 = (p2 - k0 * pu2) * inv
    p12 = (p5 - k1 * pu2) * inv
    p[:] = (p00, p01, p02, p01, p11, p12, p02, p12, p22)
    return t0, t1, t2


def _identity(scale: float) -> Row:
    return [scale, 0.0, 0.0, 0.0, scale, 0.0, 0.0, 0.0, scale]


class ClockwiseRls:
    """Base rows per (segment, clock) and shared per-term gains, with outlier rejection and a rolling MAPE.

    ``feature_scales`` (x0, x1) and ``target_scale`` normalise the regressions so one set of covariances suits
    every GPU and model; they do not change predictions.
    """

    __slots__ = (
        "_ape_sum",
        "_apes",
        "_cov",
        "_gain_cov",
        "_next",
        "_outliers_in_row",
        "_spread",
        "drift",
        "gains",
        "num_observations",
        "num_rejected",
        "rows",
        "settings",
        "x0_scale",
        "x1_scale",
        "y_scale",
    )

    def __init__(
        self,
        coef: Sequence[Sequence[Sequence[float]]],
        feature_scales: tuple[float, float],
        target_scale: float,
        settings: AdaptationSettings | None = None,
    ) -> None:
        if not coef or not coef[0] or any(len(row) != 3 for seg in coef for row in seg):
            raise ValueError("coef must be a non-empty [segment][clock] table of 3-coefficient rows")
        if min(feature_scales) <= 0 or target_scale <= 0:
            raise ValueError("feature and target scales must be positive")
        self.settings = settings or AdaptationSettings()
        self.rows: list[list[Row]] = [[[max(0.0, float(c)) for c in row] for row in seg] for seg in coef]
        self.x0_scale, self.x1_scale = float(feature_scales[0]), float(feature_scales[1])
        self.y_scale = float(target_scale)
        self._cov: list[list[Row]] = [
            [_identity(self.settings.row_covariance) for _ in seg] for seg in self.rows
        ]
        self.drift = 1.0
        self.gains: Row = [1.0, 1.0, 1.0]
        self._gain_cov = _identity(self.settings.gain_covariance)
        self.num_observations = 0
        self.num_rejected = 0
        self._spread = 0.05
        self._outliers_in_row = 0
        self._apes = [0.0] * self.settings.mape_window
        self._ape_sum = 0.0
        self._next = 0

    @property
    def num_segments(self) -> int:
        """Number of segments (rows of the table)."""
        return len(self.rows)

    def predict(self, segment: int, clock_index: int, x0: float, x1: float) -> float:
        """Prediction for one clock (target units)."""
        g0, g1, g2 = self.gains
        r0, r1, r2 = self.rows[segment][clock_index]
        return self.drift * (g0 * r0 * x0 + g1 * r1 * x1 + g2 * r2)

    def predict_all(self, segment: int, x0: float, x1: float) -> list[float]:
        """Predictions for every clock of the table, ascending clock order (target units)."""
        d = self.drift
        g0, g1, g2 = self.gains
        a0, a1, a2 = d * g0 * x0, d * g1 * x1, d * g2
        return [r0 * a0 + r1 * a1 + r2 * a2 for r0, r1, r2 in self.rows[segment]]

    def effective_row(self, segment: int, clock_index: int) -> tuple[float, float, float]:
        """(c0, c1, c2) with drift and gains folded in: the prediction is ``c0 * x0 + c1 * x1 + c2``."""
        d = self.drift
        g0, g1, g2 = self.gains
        r0, r1, r2 = self.rows[segment][clock_index]
        return d * g0 * r0, d * g1 * r1, d * g2 * r2

    def recent_mape(self) -> float:
        """Mean absolute percentage error (a fraction) of the last ``mape_window`` a-priori predictions.

        NaN before the first observation. Each error is capped at 1.0 so one glitch cannot dominate.
        """
        n = min(self.num_observations, self.settings.mape_window)
        return self._ape_sum / n if n else math.nan

    def update(self, segment: int, clock_index: int, x0: float, x1: float, y: float) -> bool:
        """Learn from one measurement ``y`` (target units); returns False when rejected as an outlier.

        Never raises on a pathological sample: a non-positive or non-finite ``y``, negative or non-finite
        features, or a prediction that overflows are rejected without touching the model.
        """
        if not (0.0 < y < math.inf and 0.0 <= x0 < math.inf and 0.0 <= x1 < math.inf):
            return False
        # Hot path (every iteration, per predictor): locals instead of repeated lookups; the arithmetic is
        # unchanged, operation for operation (pinned by tests/unit/sim/test_identical_output.py).
        s = self.settings
        row = self.rows[segment][clock_index]
        g = self.gains
        r0, r1, r2 = row
        ga, gb, gc = g
        t0, t1, t2 = ga * r0 * x0, gb * r1 * x1, gc * r2
        work = t0 + t1 + t2
        # Two-argument min()/max() spelt out as the builtins compare (NaN included), as in rls_step.
        predicted = self.drift * work
        predicted = _MIN_PREDICTION if predicted < _MIN_PREDICTION else predicted
        if not predicted < math.inf:  # overflow (absurd features): nothing sane to learn
            return False
        # The rolling MAPE of a-priori predictions: each error capped at 1.0, a ring of mape_window.
        ape = abs(y - predicted) / y
        ape = 1.0 if ape > 1.0 else ape
        apes = self._apes
        slot = self._next
        self._ape_sum += ape - apes[slot]
        apes[slot] = ape
        slot += 1
        if slot == len(apes):
            slot = 0
        self._next = slot
        self.num_observations += 1
        if slot == 0:  # re-sum once per window against accumulated rounding
            self._ape_sum = math.fsum(apes)
        ratio = y / predicted
        relative = ratio - 1.0
        threshold = s.outlier_sigmas * self._spread
        if not threshold > s.outlier_floor:
            threshold = s.outlier_floor
        size = abs(relative)
        if size > threshold and self._outliers_in_row < s.regime_change_after:
            self._outliers_in_row += 1
            self.num_rejected += 1
            return False
        self._outliers_in_row = 0
        self._spread += 0.05 * ((threshold if threshold < size else size) - self._spread)
        if s.drift_rate > 0.0:
            # Clamp the ratio before the log: y / predicted can underflow to 0 for a tiny y.
            ratio = _MIN_RATIO if ratio < _MIN_RATIO else ratio
            ratio = _MAX_RATIO if ratio > _MAX_RATIO else ratio
            self.drift *= math.exp(s.drift_rate * math.log(ratio))
        # Shared gains on what the drift left, in relative terms: regressors are the row's own shares.
        unit = 1.0 / (_MIN_PREDICTION if work < _MIN_PREDICTION else work)
        target = y / self.drift
        g0, g1, g2 = rls_step(
            ga,
            gb,
            gc,
            self._gain_cov,
            t0 * unit / ga,
            t1 * unit / gb,
            t2 * unit / gc,
            target * unit,
            s.gain_forgetting,
            s.max_covariance,
        )
        lo, hi = s.gain_bounds
        g0 = lo if g0 < lo else hi if g0 > hi else g0
        g1 = lo if g1 < lo else hi if g1 > hi else g1
        g2 = lo if g2 < lo else hi if g2 > hi else g2
        # Keep the mean gain at 1: the drift carries the uniform part, the gains only the shape (no drift-gain
        # trade-off that could wander off). Rescaling the parameters rescales their covariance.
        mean = (g0 + g1 + g2) / 3.0
        if abs(mean - 1.0) > 1e-3:
            self.drift *= mean
            inv_mean = 1.0 / mean
            g0, g1, g2 = g0 * inv_mean, g1 * inv_mean, g2 * inv_mean
            cov_scale = inv_mean * inv_mean
            self._gain_cov = [c * cov_scale for c in self._gain_cov]
        g[0], g[1], g[2] = g0, g1, g2
        target = y / self.drift
        # Then the row, on what drift and gains left, in normalised coordinates.
        y_scale = self.y_scale
        inv_y = 1.0 / y_scale
        sx0, sx1 = self.x0_scale, self.x1_scale
        c0, c1, c2 = rls_step(
            r0 * sx0 * inv_y,
            r1 * sx1 * inv_y,
            r2 * inv_y,
            self._cov[segment][clock_index],
            g0 * x0 / sx0,
            g1 * x1 / sx1,
            g2,
            target * inv_y,
            s.forgetting,
            s.max_covariance,
        )
        c0 = c0 * y_scale / sx0
        c1 = c1 * y_scale / sx1
        c2 = c2 * y_scale
        row[0] = c0 if c0 > 0.0 else 0.0
        row[1] = c1 if c1 > 0.0 else 0.0
        row[2] = c2 if c2 > 0.0 else 0.0
        return True
