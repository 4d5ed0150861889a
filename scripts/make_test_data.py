"""Rebuild tests/data from the public sources (a checkout of the data laid out as ../shared/data).

The test suite checks the simulated GPU's calibration and the trace readers on every clone, so it ships the
smallest subsets of the public data it reads (with their licenses). This script is how those subsets were
made: the Vidur per-operator profiles reduced to the token counts and median columns the calibration tests
read, splitwise's Llama2-70B rows with 128 output tokens, splitwise's constant power model, and the Azure
LLM inference trace 2023 (conversation) whole.

Usage: python scripts/make_test_data.py [SOURCE_DATA_DIR]   (default: ../shared/data)
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data"
VIDUR_TOKENS = {"1", "16", "64", "128", "256", "512", "1024", "2048", "4096"}
VIDUR_OPS = (
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


def _vidur(src: Path) -> None:
    columns = ["num_tokens", "num_tensor_parallel_workers"] + [f"time_stats.{op}.median" for op in VIDUR_OPS]
    for path in sorted((src / "calibration" / "vidur").glob("*/*/mlp.csv")):
        target = OUT / "calibration" / "vidur" / path.relative_to(src / "calibration" / "vidur")
        target.parent.mkdir(parents=True, exist_ok=True)
        with path.open(newline="") as fh, target.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            for row in csv.DictReader(fh):
                if row["num_tokens"] in VIDUR_TOKENS:
                    writer.writerow([row[c] for c in columns])
    shutil.copy(src / "calibration" / "vidur" / "LICENSE", OUT / "calibration" / "vidur" / "LICENSE")


def _splitwise(src: Path) -> None:
    target = OUT / "calibration" / "splitwise"
    target.mkdir(parents=True, exist_ok=True)
    with (src / "calibration" / "splitwise" / "perf_model.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["model"] == "llama2-70b" and r["token_size"] == "128"]
        fields = reader.fieldnames or []
    with (target / "perf_model.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for name in ("power_model_constant.yaml", "LICENSE"):
        shutil.copy(src / "calibration" / "splitwise" / name, target / name)


def _traces(src: Path) -> None:
    target = OUT / "traces"
    target.mkdir(parents=True, exist_ok=True)
    for name in (
        "AzureLLMInferenceTrace_conv.csv",
        "LICENSE-CC-BY-4.0.txt",
        "AzureLLMInferenceDataset2023.md",
    ):
        shutil.copy(src / "traces" / name, target / name)


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    if not (src / "calibration").is_dir():
        sys.exit(f"error: no public data at {src} (expected calibration/ and traces/)")
    _vidur(src)
    _splitwise(src)
    _traces(src)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
