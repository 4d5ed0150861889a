"""LMSYS-Chat-1M request lengths from the dataset paper's published statistics (the paper's LMSYS workload).

Source: Zheng et al., "LMSYS-Chat-1M: A Large-Scale Real-World LLM Conversation Dataset", ICLR 2024
(arXiv 2309.11998), Table 1 (basic statistics, tokens counted with the Llama-2 tokenizer): average tokens
per prompt 69.5 +- 143.9 and per response 214.5 +- 246.2 (mean +- standard deviation). UNVERIFIED: the
standard deviations were entered from memory of that table, and a search of public copies of the paper (its
abstract pages, mirrors, the dataset card) did not reach the table's text, so none of the four numbers has
been checked against it. The
conversations themselves are gated on their hub and cannot be shipped, so lengths are drawn, not replayed.

Shape (a choice, stated): each length is log-normal with the published mean and standard deviation (moment
matched: ``sigma^2 = ln(1 + (sd/mean)^2)``, ``mu = ln(mean) - sigma^2 / 2``), rounded, at least 1 token;
prompt and response are drawn independently (the paper publishes no joint statistics). A log-normal fits the
right-skewed, heavy-tailed chat lengths with a standard deviation twice the mean that a normal or a gamma of
the same moments would not (a normal would put 31% of prompts below zero).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

LMSYS_PROMPT_MEAN_TOKENS = 69.5
LMSYS_PROMPT_STD_TOKENS = 143.9
LMSYS_RESPONSE_MEAN_TOKENS = 214.5
LMSYS_RESPONSE_STD_TOKENS = 246.2
"""arXiv 2309.11998, Table 1 (LMSYS-Chat-1M row), not verified against it (module docstring)."""


def lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """(mu, sigma) of the log-normal with this mean and standard deviation."""
    sigma2 = math.log1p((std / mean) ** 2)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


def _draw(rng: np.random.Generator, mean: float, std: float, n: int) -> NDArray[np.int64]:
    mu, sigma = lognormal_params(mean, std)
    values: NDArray[np.int64] = np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(np.int64)
    return values


def lmsys_lengths(rng: np.random.Generator, n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``n`` (prompt, response) token counts drawn as the module docstring says."""
    prompts = _draw(rng, LMSYS_PROMPT_MEAN_TOKENS, LMSYS_PROMPT_STD_TOKENS, n)
    outputs = _draw(rng, LMSYS_RESPONSE_MEAN_TOKENS, LMSYS_RESPONSE_STD_TOKENS, n)
    return prompts, outputs
