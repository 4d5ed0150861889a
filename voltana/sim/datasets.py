"""The paper's workloads by name: ShareGPT and LMSYS-Chat-1M lengths with Poisson or bursty arrivals.

``sharegpt``: lengths sampled (without replacement while the pool lasts) from the packaged ShareGPT V3
records (:mod:`voltana.sim.sharegpt`); ``lmsys``: lengths drawn from LMSYS-Chat-1M's published statistics
(:mod:`voltana.sim.lmsys`). Arrivals as for the synthetic workload
(:func:`voltana.sim.synthetic.arrival_times`). Deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voltana.sim.lmsys import lmsys_lengths
from voltana.sim.sharegpt import sharegpt_lengths
from voltana.sim.synthetic import BURSTY_INTERARRIVAL_CV, arrival_times
from voltana.sim.workload import Workload, WorkloadError

DATASET_WORKLOADS: tuple[str, ...] = ("sharegpt", "lmsys")


def tokenizer_for_model(model: str) -> str:
    """The ShareGPT tokenizer for a simulated model name: ``qwen3`` for Qwen models, else ``llama3``."""
    return "qwen3" if model.strip().lower().startswith("qwen") else "llama3"


def dataset_workload(
    name: str,
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    arrivals: str = "poisson",
    tokenizer: str = "llama3",
    cache: Path | None = None,
    burst_cv: float = BURSTY_INTERARRIVAL_CV,
) -> Workload:
    """Requests of the dataset ``name`` arriving at ``rate_rps`` (req/s) for ``duration_s`` seconds.

    Raises :class:`WorkloadError` (one line) for an unknown name, a bad rate/duration/arrival process, or a
    missing dataset/tokenizer package.
    """
    key = name.strip().lower()
    if key not in DATASET_WORKLOADS:
        raise WorkloadError(f"unknown workload {name!r}; known: {', '.join(DATASET_WORKLOADS)}")
    rng = np.random.default_rng(seed)
    times = arrival_times(rng, rate_rps, duration_s, arrivals, burst_cv)
    n = len(times)
    if key == "sharegpt":
        pool = sharegpt_lengths(tokenizer, cache)
        if len(pool) == 0:
            raise WorkloadError("ShareGPT: no record passes the length filter")
        pick = rng.choice(len(pool), n, replace=n > len(pool))
        prompts, outputs = pool.prompt_tokens[pick], pool.output_tokens[pick]
        label = f"sharegpt/{tokenizer}"
    else:
        prompts, outputs = lmsys_lengths(rng, n)
        label = "lmsys"
    title = f"{label} ({arrivals}, {rate_rps:g} req/s, {duration_s:g} s, seed {seed})"
    return Workload(title, times, prompts.astype(np.int64), outputs.astype(np.int64))
