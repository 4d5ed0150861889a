"""What an emulated engine answers: output text that is a pure function of the prompt (so an answer can be
checked anywhere), prompt-token estimates, OpenAI completion objects.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

_VOCABULARY = (
    "the of and to in is was for on that with as by at from his her an which have are not be this one"
)
WORDS = tuple(_VOCABULARY.split(" "))


def prompt_key(body: dict[str, Any]) -> str:
    """The identity of a request's prompt (completions ``prompt`` or chat ``messages``)."""
    if "messages" in body:
        return json.dumps(body["messages"], sort_keys=True)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens: token ids counted, text estimated at 4 characters per token."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return max(1, len(prompt_key(body)) // 4)


def token_text(key: str, index: int) -> str:
    """The ``index``-th output token for prompt ``key`` (deterministic)."""
    h = zlib.crc32(key.encode())
    return " " + WORDS[(h + 7 * index + 31 * index * index) % len(WORDS)]


def expected_text(key: str, num_tokens: int) -> str:
    """The whole output an emulated engine gives for ``key`` after ``num_tokens`` tokens."""
    return "".join(token_text(key, i) for i in range(num_tokens))


def is_prompt_batch(prompt: Any) -> bool:
    """True for a completions ``prompt`` that is several prompts (texts or token-id lists)."""
    if not isinstance(prompt, list) or len(prompt) < 2:
        return False
    return all(isinstance(p, str) for p in prompt) or all(
        isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt
    )


def completion_object(
    request_id: str, model: str, chat: bool, text: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The OpenAI (chat) completion object of a finished request (``finish_reason`` "length")."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": f"cmpl-{request_id}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
