"""SGLang plugin entry point (``sglang.srt.plugins``); does nothing unless voltana is enabled."""

from __future__ import annotations


def register() -> None:
    """Called by SGLang in every process; must be idempotent. Hooks arrive with the SGLang adapter."""
