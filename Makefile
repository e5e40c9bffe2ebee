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

.PHONY: setup test test-long lint proto proto-check demo bench loadtest loadtest-soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[serve,dev,loadtest]'
	touch $(STAMP)

lint: setup
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

proto: setup
	$(VPY) proto/generate.py

proto-check: setup
	$(VPY) proto/generate.py --check

test: setup lint proto-check
	$(VPY) -m pytest $(PYTEST_FLAGS) -m "not vllm and not slow and not peers" tests

test-long: setup
	$(VPY) -m pytest $(PYTEST_FLAGS) -m "slow" tests

demo: setup
	$(VPY) -m server.demo

bench: setup
	$(VPY) loadtests/bench_offline.py

# Every load scenario, short steps, against `cocktail serve` on the demo family (built
# first if absent). Long runs: make loadtest LOADTEST_ARGS="--duration 60". See docs/capacity.md.
loadtest: setup
	$(VPY) -m loadtests.loadgen run $(LOADTEST_ARGS)

# 30 minutes at 70% of saturation, RSS and fds sampled; fails on growth past the mix's bound.
loadtest-soak: setup
	$(VPY) -m loadtests.loadgen soak $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-* build *.egg-info .pytest_cache .ruff_cache
