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


TokenSource = Literal["exact", "tokenizer", "estimate"]
"""How prompt tokens were counted: token ids (exact), the model's tokenizer, or ``CHARS_PER_TOKEN``."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated request: its body (as forwarded), model, streaming flag and prompt token counts.

    ``input_tokens`` is the sum over the request's prompts (routing), ``longest_prompt_tokens`` the largest
    single prompt (the model-length check), both counted as ``tokens_source`` says.
    """

    kind: Kind
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    input_tokens: int
    longest_prompt_tokens: int = 0
    tokens_source: TokenSource = "estimate"

    @property
    def path(self) -> str:
        """The engine path this request goes to."""
        return "/v1/completions" if self.kind == "completions" else "/v1/chat/completions"

    @property
    def prompt_only(self) -> bool:
        """``max_tokens: 0`` with ``echo: true``: prompt scoring (logprobs of the prompt), no generation."""
        return self.max_tokens == 0

    @property
    def text_prompts(self) -> list[str] | None:
        """The completions prompt(s) as text, or None (token ids, or a chat request)."""
        prompt = self.body.get("prompt")
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return list(prompt)
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any) -> int | None:
    """``value`` as an integer field the engines accept (pydantic's lax ``int``: ``2``, ``2.0``,
    ``1e3``), else None (``1.5``, ``true``, strings)."""
    if _is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


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


def _prompt_tokens(prompt: Any) -> tuple[int, int, TokenSource]:
    """(total, longest, how counted) prompt tokens of a completions ``prompt``; RouterError on a wrong shape.

    Token ids are counted exactly; text is estimated at ``CHARS_PER_TOKEN`` characters per token.
    """
    if isinstance(prompt, str):
        tokens = max(1, len(prompt) // CHARS_PER_TOKEN)
        return tokens, tokens, "estimate"
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            each = [max(1, len(p) // CHARS_PER_TOKEN) for p in prompt]
            return sum(each), max(each), "estimate"
        if all(_is_int(t) and t >= 0 for t in prompt):
            return len(prompt), len(prompt), "exact"
        if all(isinstance(p, list) and p and all(_is_int(t) and t >= 0 for t in p) for p in prompt):
            return sum(len(p) for p in prompt), max(len(p) for p in prompt), "exact"
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
        ("n", lambda v: _as_int(v) is not None and 1 <= v <= 128, "an integer in [1, 128]"),
        ("stream", lambda v: isinstance(v, bool), "a boolean"),
        ("stream_options", lambda v: isinstance(v, dict), "an object"),
        ("stop", lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
         "a string or a list of strings"),
        ("seed", lambda v: _as_int(v) is not None, "an integer"),
        ("presence_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]"),
        ("frequency_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]"),
    )  # fmt: skip
    for name, ok, expected in checks:
        if name in body and body[name] is not None and not ok(body[name]):
            raise RouterError(
                400, f"'{name}' must be {expected}, got {json.dumps(body[name])[:80]}", param=name
            )


def _model_of(body: dict[str, Any], models: dict[str, int | None]) -> str:
    """The requested model; a missing ``model`` means the only served one (as vLLM does)."""
    model = body.get("model")
    if model in (None, "") and len(models) == 1:  # vLLM serves its model for a missing or empty one
        return next(iter(models))
    if not isinstance(model, str) or not model:
        served = f"{len(models)} models are served" if models else "no served model is known yet"
        raise RouterError(
            400, f"'model' is required and must be a non-empty string ({served})", param="model"
        )
    if models and model not in models:
        raise RouterError(
            404,
            f"model {model!r} is not served here; available: {', '.join(sorted(models))}",
            param="model",
            code="model_not_found",
        )
    return model


def _check_single_sample(body: dict[str, Any]) -> None:
    """``n`` / ``best_of`` > 1 are refused: a P/D exchange pairs one prefill with one decode stream (vLLM's
    prefill leg would sample n first tokens, SGLang's legs would share one ``bootstrap_room``)."""
    for name in ("n", "best_of"):
        value = _as_int(body.get(name))
        if value is not None and value > 1:
            raise RouterError(
                400,
                f"'{name}' = {value} is not supported with disaggregated prefill/decode; send {value} "
                f"requests with '{name}' = 1 (and different seeds) instead",
                param=name,
                code="unsupported_parameter",
            )


def parse_request(
    kind: Kind, body: dict[str, Any], models: dict[str, int | None], max_tokens_limit: int
) -> ParsedRequest:
    """Validate ``body``; ``models`` maps served model ids to their max length (empty: not known yet).

    Raises :class:`RouterError` (4xx). The returned body is ``body`` with ``model`` filled in when the client
    left it out and exactly one model is served.
    """
    model = _model_of(body, models)
    if body.get("model") != model:
        body = dict(body, model=model)
    if kind == "completions":
        if "prompt" not in body:
            raise RouterError(400, "'prompt' is required", param="prompt")
        input_tokens, longest, source = _prompt_tokens(body["prompt"])
    else:
        input_tokens = longest = max(1, _message_chars(body.get("messages")) // CHARS_PER_TOKEN)
        source = "estimate"
    _check_optional(body)
    _check_single_sample(body)
    echo = kind == "completions" and body.get("echo") is True
    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        raw = body.get(name)
        if raw is None:
            continue
        value = _as_int(raw)
        if value is None or value < (0 if echo else 1):
            hint = " (0 is accepted with 'echo': true, for prompt scoring)" if kind == "completions" else ""
            raise RouterError(
                400, f"'{name}' must be a positive integer{hint}, got {json.dumps(raw)[:80]}", param=name
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
    return ParsedRequest(
        kind, body, model, bool(body.get("stream", False)), max_tokens, input_tokens, longest, source
    )


COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""``max_tokens`` of ``/v1/completions`` when absent or null, in vLLM's and SGLang's protocols (the OpenAI
default); chat has none (generation may run up to the model's length)."""


def required_output_tokens(parsed: ParsedRequest, backend: str) -> int:
    """Output tokens the engine insists fit next to the prompt, by its own rule.

    vLLM (``_validate_prompt_len`` in ``vllm/v1/engine/input_processor.py`` and ``get_max_tokens`` in
    ``vllm/entrypoints/serve/utils/api_utils.py``): a prompt must leave room for one token; a larger
    ``max_tokens`` is clamped to what is left, never refused. SGLang (``_validate_one_request`` in
    ``sglang/srt/managers/tokenizer_manager.py``): a prompt must be shorter than the context and prompt plus
    ``max_new_tokens`` must fit it (completions default 16; chat without ``max_tokens`` is not checked).
    """
    if backend != "sglang":
        return 1
    if parsed.max_tokens is not None:
        return max(1, parsed.max_tokens)
    return COMPLETIONS_DEFAULT_MAX_TOKENS if parsed.kind == "completions" else 1


def check_model_length(parsed: ParsedRequest, model_len: int | None, backend: str = "vllm") -> None:
    """Refuse (400, before any engine call) exactly what the engine would refuse for length: the longest
    prompt plus :func:`required_output_tokens` over the model's length, when the prompt was counted (token
    ids or the model's tokenizer); an estimate never refuses a request (the engine decides)."""
    if model_len is None or parsed.tokens_source == "estimate":
        return
    output = required_output_tokens(parsed, backend)
    if parsed.longest_prompt_tokens + output <= model_len:
        return
    counted = "token ids" if parsed.tokens_source == "exact" else "the model's tokenizer"
    raise context_length_error(parsed, model_len, output, str(parsed.longest_prompt_tokens), counted)


def context_length_error(
    parsed: ParsedRequest, model_len: int, output: int, prompt_tokens: str, counted: str
) -> RouterError:
    """The 400 of a request that cannot fit ``model_len``: its prompt has ``prompt_tokens`` tokens (a number,
    or "at least N"), counted from ``counted``; the engine needs ``output`` more."""
    where = "messages" if parsed.kind == "chat" else "prompt"
    return RouterError(
        400,
        f"This model's maximum context length is {model_len} tokens. However, the {where} has "
        f"{prompt_tokens} tokens (counted from {counted}) and the completion needs at least {output}. "
        f"Please reduce the length of the {where} or completion.",
        param=where,
        code="context_length_exceeded",
    )
