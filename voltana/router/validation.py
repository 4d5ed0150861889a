"""Checking OpenAI completion/chat bodies before anything reaches an engine: bad input is a 4xx, never a 500.

Only what the router relies on (and what would otherwise fail deep in an engine) is checked; other fields
pass through to the engine untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from voltana.router.errors import RouterError

Kind = Literal["completions", "chat"]
MAX_BODY_BYTES = 8 * 1024 * 1024
CHARS_PER_TOKEN = 4  # routing estimate of prompt tokens without a tokenizer (English text averages ~4 chars)
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated request: its body (as sent), model, streaming flag and the routing estimates (tokens)."""

    kind: Kind
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    input_tokens: int

    @property
    def path(self) -> str:
        """The engine path this request goes to."""
        return "/v1/completions" if self.kind == "completions" else "/v1/chat/completions"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 413 when too large, 400 when not JSON or not an object."""
    if len(raw) > MAX_BODY_BYTES:
        raise RouterError(413, f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    if not raw.strip():
        raise RouterError(400, "request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RouterError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RouterError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _prompt_tokens(prompt: Any) -> int:
    """Estimated prompt tokens of a completions ``prompt``; raises RouterError on a wrong shape."""
    if isinstance(prompt, str):
        return max(1, len(prompt) // CHARS_PER_TOKEN)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return max(1, sum(len(p) for p in prompt) // CHARS_PER_TOKEN)
        if all(_is_int(t) and t >= 0 for t in prompt):
            return len(prompt)
        if all(isinstance(p, list) and p and all(_is_int(t) and t >= 0 for t in p) for p in prompt):
            return sum(len(p) for p in prompt)
    raise RouterError(
        400,
        "'prompt' must be a non-empty string, list of strings, list of token ids or list of token-id lists",
        param="prompt",
    )


def _message_chars(messages: Any) -> int:
    """Characters of text in chat ``messages``; raises RouterError on a wrong shape."""
    if not isinstance(messages, list) or not messages:
        raise RouterError(400, "'messages' must be a non-empty list of message objects", param="messages")
    chars = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RouterError(400, f"'{where}' must be an object with 'role' and 'content'", param=where)
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise RouterError(
                400, f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}", param=f"{where}.role"
            )
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise RouterError(
                        400, f"'{where}.content' parts must be objects", param=f"{where}.content"
                    )
                text = part.get("text")
                chars += len(text) if isinstance(text, str) else 0
        elif content is not None:
            raise RouterError(
                400, f"'{where}.content' must be a string, a list of parts or null", param=f"{where}.content"
            )
    return chars


def _check_optional(body: dict[str, Any]) -> None:
    """Types of the common sampling fields, when present."""
    checks: tuple[tuple[str, Any, str], ...] = (
        ("temperature", lambda v: _is_number(v) and 0 <= v <= 2, "a number in [0, 2]"),
        ("top_p", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
        ("n", lambda v: _is_int(v) and 1 <= v <= 128, "an integer in [1, 128]"),
        ("stream", lambda v: isinstance(v, bool), "a boolean"),
        ("stream_options", lambda v: isinstance(v, dict), "an object"),
        ("stop", lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
         "a string or a list of strings"),
        ("seed", _is_int, "an integer"),
        ("presence_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]"),
        ("frequency_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]"),
    )  # fmt: skip
    for name, ok, expected in checks:
        if name in body and body[name] is not None and not ok(body[name]):
            raise RouterError(
                400, f"'{name}' must be {expected}, got {json.dumps(body[name])[:80]}", param=name
            )


def parse_request(
    kind: Kind, body: dict[str, Any], models: dict[str, int | None], max_tokens_limit: int
) -> ParsedRequest:
    """Validate ``body``; ``models`` maps served model ids to their max length (empty: not known yet)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RouterError(400, "'model' is required and must be a non-empty string", param="model")
    if models and model not in models:
        raise RouterError(
            404,
            f"model {model!r} is not served here; available: {', '.join(sorted(models))}",
            param="model",
            code="model_not_found",
        )
    if kind == "completions":
        if "prompt" not in body:
            raise RouterError(400, "'prompt' is required", param="prompt")
        input_tokens = _prompt_tokens(body["prompt"])
    else:
        input_tokens = max(1, _message_chars(body.get("messages")) // CHARS_PER_TOKEN)
    _check_optional(body)
    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise RouterError(
                400, f"'{name}' must be a positive integer, got {json.dumps(value)[:80]}", param=name
            )
        model_len = models.get(model)
        limit = min(max_tokens_limit, model_len) if model_len else max_tokens_limit
        if value > limit:
            raise RouterError(
                400,
                f"'{name}' = {value} exceeds the limit of {limit} tokens for model {model!r}",
                param=name,
                code="max_tokens_too_large",
            )
        max_tokens = value
    return ParsedRequest(kind, body, model, bool(body.get("stream", False)), max_tokens, input_tokens)
