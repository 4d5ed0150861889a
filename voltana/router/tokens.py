"""Counting prompt tokens with the model's own tokenizer, read from a local file (``router.tokenizer``).

The router refuses a request that cannot fit the model before any engine works on it
(:func:`voltana.router.validation.check_model_length`). Token-id prompts are counted exactly without this;
text prompts of ``/v1/completions`` need the tokenizer the engine uses: its ``tokenizer.json`` (a model
directory or the file itself; never fetched from a model hub), loaded with Hugging Face ``tokenizers``, and
encoded as vLLM encodes a completions prompt (special tokens added by the tokenizer's post-processor). Chat
messages keep the estimate: their token count depends on the chat template, applied by the engine. An
estimate never refuses a request.

Nothing is tokenized that bounds already decide (:func:`count_for_length_check`): a token of a byte-level
BPE vocabulary covers at least one byte and at most its longest vocabulary entry, so a prompt of ``B`` UTF-8
bytes has at most ``B + specials + 1`` tokens (one for a prefix space a Metaspace pre-tokenizer adds) and at
least ``characters / longest entry`` (vLLM's own cap, ``_text_len_check`` in ``vllm/renderers/params.py``,
``max_chars_per_token`` in ``vllm/tokenizers/hf.py``). Only a prompt between the two is tokenized, and with
``encode_batch``, which releases the GIL (``encode`` holds it for the whole call, stalling every request and
``/health`` for seconds on a megabyte prompt), in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from voltana.core.config import ConfigError
from voltana.router.validation import ParsedRequest, context_length_error

TOKENIZER_FILE = "tokenizer.json"


class PromptTokenizer(Protocol):
    """Counts the tokens of one text prompt as the engine will."""

    max_chars_per_token: int
    """Characters of the longest vocabulary entry (vLLM's ``max_chars_per_token``)."""
    special_tokens: int
    """Tokens the post-processor adds to every prompt (BOS, ...)."""

    def count_texts(self, texts: list[str]) -> list[int]:
        """Tokens of each completions prompt (special tokens included); must not hold the GIL throughout
        (it runs in a worker thread next to the event loop)."""
        ...


class HfPromptTokenizer:
    """A Hugging Face fast tokenizer from a local ``tokenizer.json`` (or the directory holding it)."""

    def __init__(self, path: str | Path) -> None:
        """Load it; raises :class:`ConfigError` (one line) when it cannot be loaded."""
        given = Path(path).expanduser()
        file = given / TOKENIZER_FILE if given.is_dir() else given
        if not file.is_file():
            raise ConfigError(f"router.tokenizer = {str(path)!r}: no {TOKENIZER_FILE} there")
        try:
            from tokenizers import Tokenizer  # noqa: PLC0415 - optional [tokenizer] extra
        except ImportError:
            raise ConfigError(
                "router.tokenizer needs the 'tokenizers' package: pip install 'voltana[tokenizer]'"
            ) from None
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises a plain Exception on a malformed file
            raise ConfigError(f"router.tokenizer = {str(path)!r}: cannot load {file.name}: {exc}") from None
        self.path = file
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        self.max_chars_per_token = max((len(token) for token in vocab), default=1)
        self.special_tokens = len(self._tokenizer.encode("", add_special_tokens=True).ids)

    def count_texts(self, texts: list[str]) -> list[int]:
        # encode_batch releases the GIL while the Rust side works; encode does not.
        return [len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=True)]


def most_tokens(text: str, tokenizer: PromptTokenizer) -> int:
    """An upper bound of ``text``'s tokens: one per UTF-8 byte, the special tokens, one prefix space."""
    return len(text.encode("utf-8", errors="surrogatepass")) + tokenizer.special_tokens + 1


def fewest_tokens(text: str, tokenizer: PromptTokenizer) -> int:
    """A lower bound of ``text``'s tokens: no token covers more characters than the longest entry."""
    return -(-len(text) // max(1, tokenizer.max_chars_per_token))


async def count_for_length_check(
    parsed: ParsedRequest, tokenizer: PromptTokenizer, model_len: int | None, output_tokens: int
) -> ParsedRequest:
    """``parsed`` with its completions text prompt(s) counted as far as the model-length check needs.

    ``output_tokens``: what the engine needs next to the prompt
    (:func:`~voltana.router.validation.required_output_tokens`). A prompt the lower bound already puts
    over the limit is refused (:class:`RouterError` 400) untokenized; when every prompt's upper bound fits,
    ``parsed`` comes back unchanged (the estimate routes it). Otherwise all prompts are tokenized in a worker
    thread (the event loop keeps serving) and come back counted (``tokens_source = "tokenizer"``). Token-id
    prompts (already exact) and chats come back unchanged.
    """
    texts = parsed.text_prompts if parsed.tokens_source == "estimate" else None
    if texts is None or model_len is None:
        return parsed
    room = model_len - output_tokens  # most prompt tokens the engine accepts
    longest = max(texts, key=lambda t: fewest_tokens(t, tokenizer))
    if fewest_tokens(longest, tokenizer) > room:
        raise context_length_error(
            parsed, model_len, output_tokens, f"at least {fewest_tokens(longest, tokenizer)}",
            f"{len(longest)} characters, at most {tokenizer.max_chars_per_token} per token",
        )  # fmt: skip
    if all(most_tokens(text, tokenizer) <= room for text in texts):
        return parsed
    counts = await asyncio.to_thread(tokenizer.count_texts, texts)
    return replace(
        parsed, input_tokens=sum(counts), longest_prompt_tokens=max(counts), tokens_source="tokenizer"
    )
