"""Online recursive least squares over a (segment x clock) table of 3-coefficient linear models.

One table predicts one target (iteration latency in s, or iteration energy in J) of one phase:
``y ~= drift * (c0 * x0 + c1 * x1 + c2)`` with ``coef[segment][clock] = (c0, c1, c2)`` in natural units.

Adaptation has two time scales:
- ``drift`` is one multiplicative factor shared by every row: each accepted observation pulls it towards
  ``measured / predicted`` with weight ``drift_rate``, so a uniform change (another GPU of the same kind,
  thermal throttling, a new driver) reaches clocks that are rarely visited within a few iterations;
- each (segment, clock) row runs its own RLS with forgetting on the remainder (``measured / drift``), which
  fixes shape errors of the seed (a clock or batch range the profile got wrong).

Robustness: an observation whose relative residual exceeds ``max(outlier_floor, outlier_sigmas * spread)``
is rejected unless ``regime_change_after`` such observations arrive in a row (then it is a real change and is
learnt). Covariances stop growing at ``max_covariance`` (no wind-up on rows that see no new information), and
coefficients are kept non-negative (work never takes negative time or energy).

Everything is plain Python floats: at 3 coefficients and ~8 clocks that is faster than numpy calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Row = list[float]
_MIN_PREDICTION = 1e-9
_MAX_LOG_RATIO = 0.5


@dataclass(frozen=True, slots=True)
class AdaptationSettings:
    """Knobs of the online adaptation (all dimensionless)."""

    forgetting: float = 0.98
    """RLS forgetting factor in (0, 1]; a row remembers about ``1 / (1 - forgetting)`` of its observations."""
    initial_covariance: float = 1.0
    """RLS covariance of a seeded row in normalised units: larger trusts the seed less and adapts faster."""
    max_covariance: float = 50.0
    """Anti-wind-up bound on the covariance diagonal (normalised units)."""
    drift_rate: float = 0.2
    """Weight of one observation in the shared drift factor (0 disables cross-clock propagation)."""
    outlier_floor: float = 0.3
    """Relative residuals below this are never treated as outliers."""
    outlier_sigmas: float = 6.0
    """Outlier threshold in multiples of the recent spread of relative residuals."""
    regime_change_after: int = 3
    """This many outliers in a row are accepted as a real change of the ground truth."""
    mape_window: int = 64
    """Observations in the rolling mean absolute percentage error."""

    def __post_init__(self) -> None:
        if not 0.0 < self.forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {self.forgetting}")
        if self.initial_covariance <= 0 or self.max_covariance < self.initial_covariance:
            raise ValueError("need 0 < initial_covariance <= max_covariance")
        if not 0.0 <= self.drift_rate < 1.0:
            raise ValueError(f"drift_rate must be in [0, 1), got {self.drift_rate}")
        if self.mape_window < 1 or self.regime_change_after < 0:
            raise ValueError("mape_window must be >= 1 and regime_change_after >= 0")


class ClockwiseRls:
    """RLS rows per (segment, clock) with a shared drift factor, outlier rejection and a rolling MAPE.

    ``feature_scales`` (x0, x1) and ``target_scale`` normalise the regression so one ``initial_covariance``
    suits every GPU and model; they do not change predictions.
    """

    __slots__ = (
        "_ape_sum",
        "_apes",
        "_cov",
        "_next",
        "_outliers_in_row",
        "_spread",
        "drift",
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
        p0 = self.settings.initial_covariance
        identity = [p0, 0.0, 0.0, 0.0, p0, 0.0, 0.0, 0.0, p0]
        self._cov: list[list[Row]] = [[list(identity) for _ in seg] for seg in self.rows]
        self.drift = 1.0
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
        c0, c1, c2 = self.rows[segment][clock_index]
        return self.drift * (c0 * x0 + c1 * x1 + c2)

    def predict_all(self, segment: int, x0: float, x1: float) -> list[float]:
        """Predictions for every clock of the table, ascending clock order (target units)."""
        g = self.drift
        return [g * (c0 * x0 + c1 * x1 + c2) for c0, c1, c2 in self.rows[segment]]

    def effective_row(self, segment: int, clock_index: int) -> tuple[float, float, float]:
        """(c0, c1, c2) with the drift folded in: the prediction is ``c0 * x0 + c1 * x1 + c2``."""
        g = self.drift
        c0, c1, c2 = self.rows[segment][clock_index]
        return g * c0, g * c1, g * c2

    def recent_mape(self) -> float:
        """Mean absolute percentage error (a fraction) of the last ``mape_window`` a-priori predictions.

        NaN before the first observation. Each error is capped at 1.0 so one glitch cannot dominate.
        """
        n = min(self.num_observations, self.settings.mape_window)
        return self._ape_sum / n if n else math.nan

    def update(self, segment: int, clock_index: int, x0: float, x1: float, y: float) -> bool:
        """Learn from one measurement ``y`` (target units); returns False when rejected as an outlier."""
        if not (y > 0.0 and math.isfinite(y)):
            return False
        s = self.settings
        row = self.rows[segment][clock_index]
        predicted = max(self.drift * (row[0] * x0 + row[1] * x1 + row[2]), _MIN_PREDICTION)
        self._record_error(abs(y - predicted) / y)
        relative = y / predicted - 1.0
        threshold = max(s.outlier_floor, s.outlier_sigmas * self._spread)
        if abs(relative) > threshold and self._outliers_in_row < s.regime_change_after:
            self._outliers_in_row += 1
            self.num_rejected += 1
            return False
        self._outliers_in_row = 0
        self._spread += 0.05 * (min(abs(relative), threshold) - self._spread)
        if s.drift_rate > 0.0:
            log_ratio = max(-_MAX_LOG_RATIO, min(_MAX_LOG_RATIO, math.log(y / predicted)))
            self.drift *= math.exp(s.drift_rate * log_ratio)
        self._rls_step(row, self._cov[segment][clock_index], x0, x1, y / self.drift)
        return True

    def _record_error(self, ape: float) -> None:
        ape = min(ape, 1.0)
        slot = self._next
        self._ape_sum += ape - self._apes[slot]
        self._apes[slot] = ape
        self._next = (slot + 1) % len(self._apes)
        self.num_observations += 1
        if self._next == 0:  # re-sum once per window against float drift
            self._ape_sum = math.fsum(self._apes)

    def _rls_step(self, row: Row, p: Row, x0: float, x1: float, target: float) -> None:
        """One RLS step with forgetting on a row, in normalised coordinates (unrolled 3x3 algebra)."""
        lam = self.settings.forgetting
        sx0, sx1, sy = self.x0_scale, self.x1_scale, self.y_scale
        u0, u1 = x0 / sx0, x1 / sx1
        t0, t1, t2 = row[0] * sx0 / sy, row[1] * sx1 / sy, row[2] / sy
        error = target / sy - (t0 * u0 + t1 * u1 + t2)
        pu0 = p[0] * u0 + p[1] * u1 + p[2]
        pu1 = p[3] * u0 + p[4] * u1 + p[5]
        pu2 = p[6] * u0 + p[7] * u1 + p[8]
        denom = lam + u0 * pu0 + u1 * pu1 + pu2
        k0, k1, k2 = pu0 / denom, pu1 / denom, pu2 / denom
        row[0] = max(0.0, (t0 + k0 * error) * sy / sx0)
        row[1] = max(0.0, (t1 + k1 * error) * sy / sx1)
        row[2] = max(0.0, (t2 + k2 * error) * sy)
        inv = 1.0 / lam if p[0] + p[4] + p[8] < 3.0 * self.settings.max_covariance else 1.0
        p[0] = (p[0] - k0 * pu0) * inv
        p[1] = (p[1] - k0 * pu1) * inv
        p[2] = (p[2] - k0 * pu2) * inv
        p[3] = (p[3] - k1 * pu0) * inv
        p[4] = (p[4] - k1 * pu1) * inv
        p[5] = (p[5] - k1 * pu2) * inv
        p[6] = (p[6] - k2 * pu0) * inv
        p[7] = (p[7] - k2 * pu1) * inv
        p[8] = (p[8] - k2 * pu2) * inv
