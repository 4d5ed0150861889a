"""Readers for the public calibration data shipped under tests/data (subsets; see tests/data/README.md)."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "calibration"
VIDUR_LINEAR_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
# Vidur model directory -> our profile (same shapes: Llama-3.1-8B has Llama-3-8B's architecture).
VIDUR_MODELS = {
    "Meta-Llama-3-8B": "llama-3.1-8b",
    "Llama-2-7b-hf": "llama-2-7b",
    "Llama-2-70b-hf": "llama-2-70b",
}
VIDUR_GPUS = {"a100": "a100-80gb", "h100": "h100-80gb"}
CALIBRATION_ROWS: list[str] = []
"""Lines comparing model and source; printed at the end of the run by this directory's conftest."""


def require(path: Path) -> Path:
    """Fail (never skip) when the calibration data the repository ships is missing."""
    if not path.exists():
        pytest.fail(f"calibration data missing at {path}: rebuild it with scripts/make_test_data.py")
    return path


@dataclass(frozen=True)
class VidurPoint:
    """Sum of the per-layer linear and element-wise operator medians (s) at max clock."""

    gpu: str
    model: str
    tp: int
    num_tokens: int
    layer_s: float


def vidur_points(token_counts: tuple[int, ...]) -> list[VidurPoint]:
    """Vidur points at ``token_counts`` for the GPUs and models we profile (median of duplicate rows)."""
    samples: dict[tuple[str, str, int, int], list[float]] = defaultdict(list)
    for gpu_dir, gpu in VIDUR_GPUS.items():
        for model_dir, model in VIDUR_MODELS.items():
            path = DATA_DIR / "vidur" / gpu_dir / model_dir / "mlp.csv"
            if not path.exists():
                continue
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    tokens = int(row["num_tokens"])
                    if tokens not in token_counts:
                        continue
                    layer_ms = sum(float(row[f"time_stats.{op}.median"]) for op in VIDUR_LINEAR_OPS)
                    tp = int(row["num_tensor_parallel_workers"])
                    samples[(gpu, model, tp, tokens)].append(layer_ms * 1e-3)
    return [VidurPoint(*key, statistics.median(values)) for key, values in sorted(samples.items())]


@dataclass(frozen=True)
class SplitwisePoint:
    """Median Llama2-70B prompt or token iteration time (s) for one configuration."""

    gpu: str
    tp: int
    phase: str
    prompt_tokens: int
    batch_size: int
    latency_s: float


def splitwise_points() -> list[SplitwisePoint]:
    """Llama2-70B single-request prompts of 512..2048 tokens and decode batches 1..16 (prompt 512)."""
    path = require(DATA_DIR / "splitwise" / "perf_model.csv")
    prompt: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    token: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["model"] != "llama2-70b" or row["hardware"] not in VIDUR_GPUS.values():
                continue
            if row["token_size"] != "128":
                continue
            tp, size, batch = int(row["tensor_parallel"]), int(row["prompt_size"]), int(row["batch_size"])
            if batch == 1 and 512 <= size <= 2048:
                prompt[(row["hardware"], tp, size)].append(float(row["prompt_time"]) * 1e-3)
            if size == 512 and batch <= 16:
                token[(row["hardware"], tp, batch)].append(float(row["token_time"]) * 1e-3)
    points = [
        SplitwisePoint(g, tp, "prefill", size, 1, statistics.median(v)) for (g, tp, size), v in prompt.items()
    ]
    points += [
        SplitwisePoint(g, tp, "decode", 512, b, statistics.median(v)) for (g, tp, b), v in token.items()
    ]
    return sorted(points, key=lambda p: (p.gpu, p.tp, p.phase, p.prompt_tokens, p.batch_size))


def splitwise_power_w() -> dict[str, dict[str, float]]:
    """Per-GPU idle/prompt/token power (W) from splitwise's constant power model (tiny YAML)."""
    path = require(DATA_DIR / "splitwise" / "power_model_constant.yaml")
    levels: dict[str, dict[str, float]] = defaultdict(dict)
    section = ""
    for line in path.read_text().splitlines():
        if line.endswith(":") and not line.startswith(" "):
            section = line[:-1].replace("_power", "")
        elif line.startswith("  ") and ":" in line and section:
            gpu, value = (part.strip() for part in line.split(":", 1))
            levels[gpu][section] = float(value)
    return dict(levels)
