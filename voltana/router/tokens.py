"""Counting prompt tokens with the model's own tokenizer, read from a local file (``router.tokenizer``).

The router refuses a request that cannot fit the model before any engine works on it
(:func:`voltana.router.validation.check_model_length`). Token-id prompts are counted exactly without this;
text prompts of ``/v1/completions`` need the tokenizer the engine uses: its ``tokenizer.json`` (a model
directory or the file itself; never fetched from a model hub), loaded with Hugging Face ``tokenizers``, and
encoded as vLLM encodes a completions prompt (special tokens added by the tokenizer's post-processor). Chat
messages keep the estimate: their token count depends on the chat template, applied by the engine. An
estimate never refuses a request.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

from voltana.core.config import ConfigError
from voltana.router.validation import ParsedRequest

TOKENIZER_FILE = "tokenizer.json"


class PromptTokenizer(Protocol):
    """Counts the tokens of one text prompt as the engine will."""

    def count_text(self, text: str) -> int:
        """Tokens of one completions prompt (special tokens included)."""
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
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "router.tokenizer needs the 'tokenizers' package: pip install 'voltana[tokenizer]'"
            ) from None
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises a plain Exception on a malformed file
            raise ConfigError(f"router.tokenizer = {str(path)!r}: cannot load {file.name}: {exc}") from None
        self.path = file

    def count_text(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=True).ids)


def count_with_tokenizer(parsed: ParsedRequest, tokenizer: PromptTokenizer) -> ParsedRequest:
    """``parsed`` with its completions text prompt(s) counted by ``tokenizer`` (``tokens_source =
    "tokenizer"``); token-id prompts (already exact) and chats come back unchanged. CPU-bound: call it off
    the event loop for long prompts."""
    texts = parsed.text_prompts if parsed.tokens_source == "estimate" else None
    if texts is None:
        return parsed
    counts = [tokenizer.count_text(text) for text in texts]
    return replace(
        parsed, input_tokens=sum(counts), longest_prompt_tokens=max(counts), tokens_source="tokenizer"
    )
