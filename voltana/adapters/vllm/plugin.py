"""vLLM general plugin entry point (``vllm.general_plugins``); does nothing unless voltana is enabled."""

from __future__ import annotations


def register() -> None:
    """Called by vLLM in every process; must be idempotent. Installed hooks arrive with the vLLM adapter."""
