"""Built-in synthetic workload: Poisson or bursty arrivals with conversation-like prompt/output lengths.

Length distributions are empirical quantile tables fitted from the Azure LLM inference trace 2023,
conversation service (github.com/Azure/AzurePublicDataset ``data/AzureLLMInferenceTrace_conv.csv`` @ b469a113,
CC-BY 4.0; Patel et al., "Splitwise", ISCA 2024): 19,366 requests over 3,502 s, mean 5.53 req/s, mean prompt
1,155 tokens, mean output 211 tokens, inter-arrival coefficient of variation 1.09 (close to Poisson). Lengths
are drawn independently by inverse-CDF with linear interpolation between the quantiles (the trace's
log-length correlation between prompt and output is 0.09, so independence loses little).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from voltana.sim.workload import Workload, WorkloadError

# Percentile levels (%) and the trace's token counts at them (numpy.percentile, linear), from the file above.
QUANTILE_LEVELS_PCT: tuple[float, ...] = (
    0, 1, 2.5, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.9, 100,
)  # fmt: skip
CONV_PROMPT_TOKENS_AT_LEVEL: tuple[int, ...] = (
    2, 29, 120, 181, 207, 372, 387, 396, 403, 414, 703, 984, 1020, 1045, 1071, 1097, 1130, 1189, 1315, 1876,
    2734, 4083, 4092, 4142, 6179, 14050,
)  # fmt: skip
CONV_OUTPUT_TOKENS_AT_LEVEL: tuple[int, ...] = (
    7, 16, 28, 41, 54, 67, 77, 85, 91, 96, 103, 113, 129, 151, 177, 217, 384, 395, 400, 411, 424, 451, 522,
    601, 954, 1000,
)  # fmt: skip
CONV_RATE_RPS = 5.53
"""Mean arrival rate of the conversation trace (19,366 requests / 3,502 s)."""

BURSTY_INTERARRIVAL_CV = 3.0
"""Coefficient of variation of gamma inter-arrivals for ``bursty`` (a chosen stress setting, not fitted)."""

MAX_REQUESTS = 1_000_000
"""Most requests one generated workload may hold (``rate x duration``): every request is drawn up front and
kept by the simulator (arrays plus per-request state), and the simulator runs thousands, not millions, of
requests per second, so more would exhaust memory or run for hours."""

ArrivalProcess = Literal["poisson", "bursty"]


def _sample_quantiles(rng: np.random.Generator, values: tuple[int, ...], n: int) -> np.ndarray:
    levels = np.asarray(QUANTILE_LEVELS_PCT) / 100.0
    draws = np.interp(rng.random(n), levels, np.asarray(values, dtype=np.float64))
    result: np.ndarray = np.maximum(1, np.rint(draws)).astype(np.int64)
    return result


def synthetic_workload(
    rate_rps: float = CONV_RATE_RPS,
    duration_s: float = 120.0,
    seed: int = 0,
    arrivals: ArrivalProcess = "poisson",
    burst_cv: float = BURSTY_INTERARRIVAL_CV,
) -> Workload:
    """Conversation-like requests arriving at ``rate_rps`` (mean, req/s) for ``duration_s`` seconds.

    ``poisson``: exponential inter-arrivals; ``bursty``: gamma inter-arrivals with coefficient of
    variation ``burst_cv`` (same mean). Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    times = arrival_times(rng, rate_rps, duration_s, arrivals, burst_cv)
    n = len(times)
    prompts = _sample_quantiles(rng, CONV_PROMPT_TOKENS_AT_LEVEL, n)
    outputs = _sample_quantiles(rng, CONV_OUTPUT_TOKENS_AT_LEVEL, n)
    name = f"synthetic-conversation ({arrivals}, {rate_rps:g} req/s, {duration_s:g} s, seed {seed})"
    return Workload(name, times, prompts, outputs)


def check_request_count(rate_rps: float, duration_s: float) -> float:
    """The expected number of requests of ``rate_rps`` (req/s) for ``duration_s`` (s). Raises
    :class:`WorkloadError` (one line) for a rate or duration that is not positive, or for more than
    :data:`MAX_REQUESTS` requests: cheap, so a sweep can check every rate before it simulates any."""
    if not rate_rps > 0:
        raise WorkloadError(f"request rate must be positive, got {rate_rps}")
    if not duration_s > 0:
        raise WorkloadError(f"duration must be positive, got {duration_s}")
    expected = rate_rps * duration_s
    if expected > MAX_REQUESTS:
        raise WorkloadError(
            f"{rate_rps:g} req/s for {duration_s:g} s is {expected:.3g} requests; at most {MAX_REQUESTS:,} "
            "per run (each is generated up front and kept in memory): lower the rate or the duration"
        )
    return expected


def arrival_times(
    rng: np.random.Generator,
    rate_rps: float,
    duration_s: float,
    arrivals: str = "poisson",
    burst_cv: float = BURSTY_INTERARRIVAL_CV,
) -> np.ndarray:
    """Arrival times (s, ascending, first at 0) within ``duration_s`` at mean ``rate_rps``; at least one.

    ``poisson``: exponential inter-arrivals; ``bursty``: gamma inter-arrivals with coefficient of variation
    ``burst_cv`` (same mean). Raises :class:`WorkloadError` for a bad rate, duration or process name, or
    for more than :data:`MAX_REQUESTS` expected arrivals.
    """
    expected = check_request_count(rate_rps, duration_s)
    n_draw = int(expected + 6 * np.sqrt(expected * max(1.0, burst_cv**2)) + 16)
    mean_gap_s = 1.0 / rate_rps
    if arrivals == "poisson":
        gaps = rng.exponential(mean_gap_s, n_draw)
    elif arrivals == "bursty":
        shape = 1.0 / burst_cv**2
        gaps = rng.gamma(shape, mean_gap_s / shape, n_draw)
    else:
        raise WorkloadError(f"unknown arrival process {arrivals!r}; known: poisson, bursty")
    times = np.cumsum(gaps) - gaps[0]
    n = max(1, int(np.searchsorted(times, duration_s, side="left")))
    result: np.ndarray = times[:n].astype(np.float64)
    return result
