PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 1000
SIM_ARGS ?=

MAKEFLAGS += --no-print-directory

.PHONY: install test lint typecheck importlint pytest demo sim-demo sim bench bench-quick e2e clean

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

# The user's story on a real cluster (docs/kubernetes.md): needs KUBECONFIG, the images
# taskraft:0.1.0 and taskraft-operator:0.1.0 loaded into the cluster, and Helm (`make helm` or
# helm on PATH); every test skips, saying how, without them. Not part of `make test`.
e2e: $(STAMP)
	$(BIN)/pytest e2e -v

# Helm, built from source with the Go toolchain (no release binary is downloaded), for
# tests/operator/test_chart.py: `helm lint` and `helm template` of charts/taskraft-operator.
# The ldflags set what a release build reports: its version and the Kubernetes version that
# `helm template` and `helm lint` assume by default (the client-go minor of this Helm release).
HELM_VERSION := v3.17.4
HELM_K8S_MINOR := 32
HELM := e2e/.bin/helm
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach package,pkg/chartutil pkg/lint/rules,\
	-X helm.sh/helm/v3/$(package).k8sVersionMajor=1 \
	-X helm.sh/helm/v3/$(package).k8sVersionMinor=$(HELM_K8S_MINOR))

.PHONY: helm
helm: $(HELM)

$(HELM):
	GOBIN=$(CURDIR)/e2e/.bin GOFLAGS=-buildvcs=false go install -ldflags '$(HELM_LDFLAGS)' \
		helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache build dist
	find . -name '*.egg-info' -prune -exec rm -rf {} +
	find . -name __pycache__ -prune -exec rm -rf {} +
