"""A tiny random Llama with a locally trained byte-level BPE tokenizer: a real model directory, no model hub.

vLLM loads it like any Hugging Face checkpoint. head_dim = 256 / 4 = 64 (the CPU attention backend rejects
head_dim < 32). Weights are random but seeded, so greedy outputs are deterministic for a given directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_VOCAB_SIZE = 512
TINY_MAX_POSITIONS = 1024

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. ",
    "Energy efficient serving of large language models with prefill and decode disaggregation. ",
    "GPU clocks trade latency for power: lower clocks save energy when the deadline allows. ",
    "Hello world, this is a tiny tokenizer trained on a handful of sentences for tests. ",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?-()[]{}'\" ",
)


def train_bpe_tokenizer() -> Any:
    """The tiny byte-level BPE tokenizer (a ``tokenizers.Tokenizer``; save it with ``.save(path)``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line * 20 for line in _CORPUS], trainer=trainer)
    return tok


def _train_tokenizer(out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe_tokenizer()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", model_max_length=TINY_MAX_POSITIONS
    )
    # A chat template so the OpenAI chat endpoint works too.
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(out_dir)


def _build_model(out_dir: Path, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_POSITIONS,
        bos_token_id=0,
        eos_token_id=1,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)


def build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Write a ~5 MB Llama checkpoint plus tokenizer into ``out_dir`` (created) and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    _train_tokenizer(out_dir)
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(out_dir))
    _build_model(out_dir, vocab_size, seed)
    return out_dir


if __name__ == "__main__":
    import sys

    print(build_tiny_llama(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama")))
