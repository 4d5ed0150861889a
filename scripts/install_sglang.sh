#!/usr/bin/env bash
# Installs the SGLang test tier into its own virtualenv $VENV_SGLANG: SGLang imports its scheduler on a CPU-only
# machine, but not beside the vLLM CPU build (it pins torch==2.14.1 and needs torchvision, whose PyPI build only
# loads beside the matching PyPI torch). So: the torch/torchvision pair SGLang pins, SGLang itself without its GPU
# kernel packages (flashinfer, sglang-kernel, deep-gemm, ...: several GB that cannot run here), the pure-Python
# packages its scheduler imports, then voltana editable with its test tools.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV_SGLANG=${VENV_SGLANG:-.venv-sglang}
SGLANG_VERSION=${SGLANG_VERSION:-0.5.23}
TORCH_VERSION=${SGLANG_TORCH_VERSION:-2.14.1}
TORCHVISION_VERSION=${SGLANG_TORCHVISION_VERSION:-0.29.1}
PIP="$VENV_SGLANG/bin/python -m pip"

[ -x "$VENV_SGLANG/bin/python" ] || $PYTHON -m venv "$VENV_SGLANG"
$PIP install -q --upgrade pip
$PIP install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
$PIP install -q --no-deps "sglang==$SGLANG_VERSION"
# pip then reports SGLang's GPU-only requirements as "dependency conflicts": expected, nothing here needs them.
# What `import sglang.srt.managers.scheduler` and its HTTP server module need, pinned where SGLang pins them.
$PIP install -q \
    "transformers==5.19.0" "tokenizers==0.23.2" "sentencepiece==0.2.1" "compressed-tensors==0.18.0" \
    "openai==2.8.0" "apache-tvm-ffi==0.1.11" \
    numpy orjson psutil pybase64 requests packaging pillow msgspec pydantic pyzmq tqdm ipython aiohttp \
    huggingface_hub setproctitle dill gguf partial_json_parser einops "uvicorn>=0.51" fastapi \
    prometheus-client python-multipart uvloop \
    "xgrammar==0.2.7" "soundfile==0.13.1" "python-dateutil<3" jsonschema
$PIP install -q -e '.[dev]'
"$VENV_SGLANG/bin/python" -c "import sglang, sglang.srt.managers.scheduler, sglang.srt.plugins.hook_registry, sglang.srt.entrypoints.http_server; print('sglang', sglang.__version__)"
