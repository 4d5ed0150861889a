"""EcoPred online: RLS convergence, outliers and regime changes, MAPE, seen range, interpolation."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pytest
from ecofreq_helpers import a100, default_clocks, predictors

from voltana.core.predictor import LatencyPredictor, features, prefill_attention_work
from voltana.core.rls import AdaptationSettings, ClockwiseRls
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest


def single_row(coef: tuple[float, float, float], **settings: float) -> ClockwiseRls:
    return ClockwiseRls([[coef]], (1000.0, 1000.0), 1.0, AdaptationSettings(**settings))  # type: ignore[arg-type]


def test_rls_learns_the_true_linear_coefficients_from_a_wrong_seed() -> None:
    true = (2e-4, 5e-5, 0.01)
    model = single_row((1e-4, 1e-4, 0.03), outlier_floor=10.0)
    points = [(x0, x1) for x0 in (10, 200, 500, 900) for x1 in (0, 300, 1000)]
    for _ in range(40):
        for x0, x1 in points:
            model.update(0, 0, x0, x1, true[0] * x0 + true[1] * x1 + true[2])
    for x0, x1 in [(50, 50), (700, 800), (1000, 0)]:
        expected = true[0] * x0 + true[1] * x1 + true[2]
        assert model.predict(0, 0, x0, x1) == pytest.approx(expected, rel=1e-3)


def test_a_single_spike_is_rejected_and_changes_nothing() -> None:
    predictor, _ = predictors(Phase.DECODE)
    before = predictor.values(64.0, 64_000.0)
    expected = predictor.value_at(64.0, 64_000.0, default_clocks()[-1])
    assert not predictor.observe(64.0, 64_000.0, default_clocks()[-1], expected * 5.0)
    assert predictor.values(64.0, 64_000.0) == before
    assert predictor.model.num_rejected == 1


def test_a_persistent_change_is_accepted_after_regime_change_after_outliers() -> None:
    predictor, _ = predictors(Phase.DECODE)
    clock = default_clocks()[-1]
    expected = predictor.value_at(64.0, 64_000.0, clock)
    verdicts = [predictor.observe(64.0, 64_000.0, clock, expected * 2.0) for _ in range(5)]
    limit = predictor.model.settings.regime_change_after
    assert verdicts[:limit] == [False] * limit
    assert verdicts[limit] is True
    assert predictor.value_at(64.0, 64_000.0, clock) > expected * 1.1


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_invalid_measurements_are_ignored(bad: float) -> None:
    predictor, _ = predictors(Phase.PREFILL)
    before = predictor.values(1024.0, 5e5)
    assert not predictor.observe(1024.0, 5e5, default_clocks()[-1], bad)
    assert predictor.values(1024.0, 5e5) == before
    assert predictor.num_observations == 0


def test_recent_mape_is_nan_before_data_and_tracks_relative_error() -> None:
    predictor, _ = predictors(Phase.DECODE)
    assert math.isnan(predictor.recent_mape())
    clock = default_clocks()[-1]
    truth = a100().cost(Phase.DECODE, 32, 32, 32_000, clock).latency_s
    predictor.observe(32.0, 32_000.0, clock, truth * 1.1)  # prediction was ~truth: 1/1.1 - 1 ~ 9.1% off
    assert predictor.recent_mape() == pytest.approx(0.1 / 1.1, abs=0.01)


def test_covers_the_profiled_range_and_grows_with_observations() -> None:
    predictor, _ = predictors(Phase.DECODE)
    assert predictor.covers(256.0, 100_000.0)
    assert not predictor.covers(4096.0, 100_000.0)
    clock = default_clocks()[-1]
    big = a100().cost(Phase.DECODE, 1024, 1024, 400_000, clock).latency_s
    for _ in range(4):  # the first looks like an outlier run; a regime change is then accepted
        predictor.observe(1024.0, 400_000.0, clock, big)
    assert predictor.covers(1024.0, 400_000.0)


def test_clocks_between_grid_clocks_are_interpolated_in_the_period() -> None:
    predictor, _ = predictors(Phase.PREFILL)
    clocks = default_clocks()
    lo, hi = clocks[-2], clocks[-1]
    middle = 1320  # a supported A100 clock between two grid clocks
    assert lo < middle < hi
    x0, x1 = 4096.0, prefill_attention_work(4096, 0, 1)
    a, b = predictor.value_at(x0, x1, lo), predictor.value_at(x0, x1, hi)
    w = (1 / middle - 1 / lo) / (1 / hi - 1 / lo)
    assert predictor.value_at(x0, x1, middle) == pytest.approx((1 - w) * a + w * b)
    truth = a100().cost(Phase.PREFILL, 1, 4096, 0, middle).latency_s
    assert predictor.value_at(x0, x1, middle) == pytest.approx(truth, rel=0.05)


def test_snapshot_api_matches_feature_api() -> None:
    predictor, energy = predictors(Phase.PREFILL)
    requests = [ScheduledRequest("a", 700, 300, 0.0), ScheduledRequest("b", 500, 0, 0.0)]
    snapshot = BatchSnapshot.build(Phase.PREFILL, requests, now_s=1.0)
    x0, x1 = features(snapshot)
    assert (x0, x1) == (1200.0, prefill_attention_work(1200, 300, 2))
    clock = default_clocks()[3]
    assert predictor.predict_latency_s(snapshot, clock) == predictor.value_at(x0, x1, clock)
    assert predictor.latencies_s(snapshot) == predictor.values(x0, x1)
    assert energy.energies_j(snapshot) == energy.values(x0, x1)
    assert energy.predict_energy_j(snapshot, clock) > 0


def test_seeded_energy_model_matches_the_simulated_gpu_and_shows_the_u_curve() -> None:
    _, energy = predictors(Phase.PREFILL)
    clocks = default_clocks()
    x0, x1 = 8192.0, prefill_attention_work(8192, 0, 4)
    predicted = energy.values(x0, x1)
    truth = [a100().cost(Phase.PREFILL, 4, 8192, 0, c).energy_j for c in clocks]
    for p, t in zip(predicted, truth, strict=True):
        assert p == pytest.approx(t, rel=0.05)
    cheapest = min(range(len(clocks)), key=predicted.__getitem__)
    assert 0 < cheapest < len(clocks) - 1  # neither the lowest nor the highest clock: a U-curve


@pytest.mark.parametrize(
    "kwargs",
    [
        {"forgetting": 0.0},
        {"gain_forgetting": 1.5},
        {"row_covariance": 100.0},
        {"gain_bounds": (2.0, 3.0)},
        {"drift_rate": 1.0},
        {"mape_window": 0},
    ],
)
def test_adaptation_settings_reject_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AdaptationSettings(**kwargs)  # type: ignore[arg-type]


def test_table_shape_must_match_clocks_and_segments() -> None:
    model = ClockwiseRls([[(1.0, 1.0, 1.0)]], (1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="shape"):
        LatencyPredictor(Phase.DECODE, (1005, 1410), (8,), model, 8.0, 100.0)
    with pytest.raises(ValueError, match="ascending"):
        LatencyPredictor(Phase.DECODE, (1410, 1005), (8,), model, 8.0, 100.0)


@pytest.mark.parametrize(
    ("x0", "x1", "measured"),
    [
        (1e12, 100.0, 5e-324),  # y / predicted underflows to 0: log(0) raised "math domain error"
        (math.inf, 100.0, 0.1),  # the prediction overflows: y / inf == 0, same error
        (math.nan, 100.0, 0.1),  # NaN features used to poison the drift (every prediction NaN)
        (-5.0, 100.0, 0.1),
        (100.0, 100.0, 0.0),
        (100.0, 100.0, -1.0),
        (100.0, 100.0, math.inf),
    ],
)
def test_pathological_samples_never_raise_or_poison_the_model(x0: float, x1: float, measured: float) -> None:
    model = single_row((1e-4, 1e-4, 0.03))
    sane = model.predict(0, 0, 100.0, 100.0)
    for _ in range(10):  # more than regime_change_after in a row: the path where a sample is finally learnt
        model.update(0, 0, x0, x1, measured)
    after = model.predict(0, 0, 100.0, 100.0)
    assert math.isfinite(after) and after > 0.0
    assert math.isfinite(model.drift) and all(math.isfinite(g) for g in model.gains)
    # The model still learns from sane samples afterwards.
    for _ in range(50):
        model.update(0, 0, 100.0, 100.0, 2.0 * sane)
    assert model.predict(0, 0, 100.0, 100.0) == pytest.approx(2.0 * sane, rel=0.05)


def test_batch_value_gives_the_predictions_of_predict() -> None:
    """The decode load rule's batch-size search uses ``batch_value``: the very floats of ``predict``, in every
    segment (capture sizes) and at every clock, after the model has moved away from its seed."""
    predictor, _ = predictors(Phase.DECODE)
    clocks = default_clocks()
    for i in range(200):  # learn something: drift, gains and rows all move
        x0 = float(1 + (i * 37) % 300)
        predictor.observe(
            x0, x0 * 9000.0, clocks[i % len(clocks)], predictor.value_at(x0, x0 * 9000.0, clocks[-1]) * 1.2
        )
    model = predictor.model
    for k in range(len(clocks)):
        for per_request_kv in (0.0, 1234.5, 60_000.0):
            for size in (0.0, 1.0, 3.0, 17.0, 255.0, 512.0, 2000.0):
                expected = model.predict(predictor.segment_of(size), k, size, size * per_request_kv)
                assert predictor.batch_value(k, per_request_kv, size) == expected


def test_largest_batch_is_the_binary_search_over_batch_value() -> None:
    """The decode load rule's largest in-bound batch: the binary search over ``batch_value``'s floats (the
    same sizes probed, the same answer), at every clock, for caps within and beyond the capture sizes, after
    the model has moved away from its seed. With ``enough_tps`` it may stop at a smaller batch, but only one
    that settles the same question: whether the largest batch carries ``enough_tps`` tokens/s."""
    predictor, _ = predictors(Phase.DECODE)
    clocks = default_clocks()
    for i in range(200):
        x0 = float(1 + (i * 37) % 300)
        predictor.observe(
            x0, x0 * 9000.0, clocks[i % len(clocks)], predictor.value_at(x0, x0 * 9000.0, clocks[-1]) * 1.2
        )

    def reference(curve: Callable[[float], float], top: int, bound: float) -> int:
        lo, hi = 0, top
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if curve(float(mid)) <= bound:
                lo = mid
            else:
                hi = mid - 1
        return lo

    answers = set()
    for k in range(len(clocks)):
        for per_request_kv in (0.0, 1234.5, 60_000.0):
            curve = partial(predictor.batch_value, k, per_request_kv)
            for top in (0, 1, 7, 256, 512, 5000, 20_000):
                for bound in (1e-4, 0.02, 0.045, 0.2, 5.0):
                    answer = predictor.largest_batch(k, per_request_kv, top, bound)
                    assert answer == reference(curve, top, bound)
                    answers.add(answer)
                    for enough_tps in (0.0, 10.0, 1e3, 1e4, 1e5, math.inf):
                        early = predictor.largest_batch(k, per_request_kv, top, bound, enough_tps)
                        assert (early == 0) == (answer == 0) and early <= answer
                        if early < answer:  # stopped early: only at a batch that already carries it
                            assert early / bound >= enough_tps
                            assert answer / curve(float(answer)) >= enough_tps
    # The cases reach every kind of answer: none, within the tabled sizes and beyond the last capture size.
    assert 0 in answers and max(answers) > 512 and len(answers) > 10
