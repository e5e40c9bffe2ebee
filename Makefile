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

.PHONY: setup test test-long lint proto proto-check demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[serve,dev]'
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

# Long suites (`slow` marker): thousands of fuzzed inputs, 60 kill -9 trials, drains under
# heavy load, the full demo family. Bounded: CI gives it LONG_MINUTES at most.
LONG_MINUTES ?= 30
test-long: setup
	timeout --signal=INT --kill-after=60 $$(( $(LONG_MINUTES) * 60 )) \
		$(VPY) -m pytest $(PYTEST_FLAGS) -m "slow and not vllm and not peers" tests

demo: setup
	$(VPY) -m server.demo

bench: setup
	$(VPY) loadtests/bench_offline.py

clean:
	rm -rf $(VENV) .venv-* build *.egg-info .pytest_cache .ruff_cache
