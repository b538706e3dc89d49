PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 1000
SIM_ARGS ?=

MAKEFLAGS += --no-print-directory

.PHONY: install test lint typecheck importlint pytest fuzz demo sim-demo sim bench bench-quick e2e controlplane clean

install: $(STAMP)

# (Re)install whenever the venv is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check node operator tests bench e2e

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy e2e/localkube

importlint: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest -n 2
	PYTHONPATH=e2e $(BIN)/pytest -p no:cacheprovider --confcutdir=e2e/localkube e2e/localkube/tests

# Recipes run in order and make stops at the first failure.
test: $(STAMP)
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) importlint
	$(MAKE) pytest

# The fuzz tests and the Hypothesis tests of the decoders with many more examples, then each
# coverage-guided atheris harness (tests/fuzz/atheris/) for ATHERIS_SECONDS (minutes in all). A
# failing input is saved in .atheris/; `$(BIN)/python tests/fuzz/atheris/fuzz_X.py FILE` replays it.
ATHERIS_SECONDS ?= 60
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -n 2 -p no:cacheprovider tests/fuzz tests/protocol tests/peer tests/queue/test_queue_codec.py
	mkdir -p .atheris
	for harness in tests/fuzz/atheris/fuzz_*.py; do \
		$(BIN)/python $$harness -max_total_time=$(ATHERIS_SECONDS) -artifact_prefix=.atheris/ \
			|| exit 1; \
	done

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

# The user's story (e2e/test_user_story.py) on a real Kubernetes control plane. With KUBECONFIG
# set, on that cluster (e.g. kind, with the images taskraft:0.1.0 and taskraft-operator:0.1.0
# loaded; docs/kubernetes.md). Without it, on the local one: kube-apiserver, the controllers and
# the scheduler built from Go modules (e2e/controlplane) and a kubelet that runs pods as
# processes (e2e/localkube), all in network namespaces of their own. Not part of `make test`.
E2E_PYTEST := $(BIN)/pytest e2e --ignore=e2e/localkube -v -p no:cacheprovider
e2e: $(STAMP) $(HELM) controlplane
	@if [ -n "$$KUBECONFIG" ]; then \
		$(E2E_PYTEST); \
	else \
		directory=$$(mktemp -d -t taskraft-e2e-XXXXXX) && echo "local cluster in $$directory" && \
		PYTHONPATH=e2e $(BIN)/python -m localkube run --directory $$directory -- $(E2E_PYTEST); \
	fi

# The control plane of `make e2e`, built once into e2e/.bin (again only when its pins change).
controlplane:
	bash e2e/controlplane/build.sh

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
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache .atheris build dist
	find . -name '*.egg-info' -prune -exec rm -rf {} +
	find . -name __pycache__ -prune -exec rm -rf {} +
