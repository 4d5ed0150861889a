"""The synthetic generator: calibration against the Azure conversation trace, determinism, arrival shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voltana.sim.synthetic import (
    CONV_OUTPUT_TOKENS_AT_LEVEL,
    CONV_PROMPT_TOKENS_AT_LEVEL,
    CONV_RATE_RPS,
    QUANTILE_LEVELS_PCT,
    synthetic_workload,
)
from voltana.sim.workload import WorkloadError, load_workload

TRACE = Path(__file__).resolve().parents[2] / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"


def test_shipped_quantiles_are_the_trace_quantiles() -> None:
    trace = load_workload(TRACE)
    prompts = np.percentile(trace.input_tokens, QUANTILE_LEVELS_PCT)
    outputs = np.percentile(trace.output_tokens, QUANTILE_LEVELS_PCT)
    assert np.rint(prompts).astype(int).tolist() == list(CONV_PROMPT_TOKENS_AT_LEVEL)
    assert np.rint(outputs).astype(int).tolist() == list(CONV_OUTPUT_TOKENS_AT_LEVEL)
    assert trace.rate_rps == pytest.approx(CONV_RATE_RPS, rel=0.01)


def test_samples_match_the_trace_distribution() -> None:
    trace = load_workload(TRACE)
    synthetic = synthetic_workload(CONV_RATE_RPS, 3600.0, seed=3)
    for ours, theirs in (
        (synthetic.input_tokens, trace.input_tokens),
        (synthetic.output_tokens, trace.output_tokens),
    ):
        assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.05)
        assert np.median(ours) == pytest.approx(np.median(theirs), rel=0.05)


def test_poisson_rate_and_determinism() -> None:
    a = synthetic_workload(8.0, 500.0, seed=1)
    b = synthetic_workload(8.0, 500.0, seed=1)
    c = synthetic_workload(8.0, 500.0, seed=2)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.input_tokens, b.input_tokens)
    assert not np.array_equal(a.input_tokens[:50], c.input_tokens[:50])
    assert a.rate_rps == pytest.approx(8.0, rel=0.1)
    assert a.arrival_s[0] == 0.0 and a.arrival_s[-1] < 500.0
    gaps = np.diff(a.arrival_s)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.1)


def test_bursty_keeps_the_mean_rate_with_more_variance() -> None:
    bursty = synthetic_workload(8.0, 2000.0, seed=1, arrivals="bursty")
    gaps = np.diff(bursty.arrival_s)
    assert bursty.rate_rps == pytest.approx(8.0, rel=0.15)
    assert np.std(gaps) / np.mean(gaps) > 2.0


def test_bad_parameters() -> None:
    with pytest.raises(WorkloadError, match="positive"):
        synthetic_workload(0.0)
    with pytest.raises(WorkloadError, match="unknown arrival"):
        synthetic_workload(1.0, arrivals="weird")  # type: ignore[arg-type]
