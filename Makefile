PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 1000
SIM_ARGS ?=

MAKEFLAGS += --no-print-directory

.PHONY: install test lint typecheck importlint pytest demo sim-demo sim bench bench-quick clean

install: $(STAMP)

# (Re)install whenever the venv is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check node operator tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

importlint: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest -n 2

# Recipes run in order and make stops at the first failure.
test: $(STAMP)
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) importlint
	$(MAKE) pytest

# A local 3-node cluster of real processes: enqueue, consume, kill the leader, check nothing is lost.
demo: $(STAMP)
	$(BIN)/python -m taskraft.demo

# The Raft core alone, narrated inside the deterministic simulator.
sim-demo: $(STAMP)
	$(BIN)/python -m taskraft.sim.demo

sim: $(STAMP)
	$(BIN)/python -m taskraft.sim --seeds $(SEEDS) $(SIM_ARGS)

# The queue benchmark on a local cluster of real processes (many minutes); see bench/README.md.
bench: $(STAMP)
	$(BIN)/python bench/queue_bench.py

# The same with small counts, in under a minute: checks that the benchmark works.
bench-quick: $(STAMP)
	$(BIN)/python bench/queue_bench.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache build dist
	find . -name '*.egg-info' -prune -exec rm -rf {} +
	find . -name __pycache__ -prune -exec rm -rf {} +
