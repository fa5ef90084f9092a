# ocisync: the commands a developer and CI run. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
TESTENV := e2e/testenv.sh
# oras-py, the independent client the interop tests and the benchmark compare against.
PYENV := $(CURDIR)/target/pyenv
export OCISYNC_PYTHON := $(PYENV)/bin/python
# Helm and kubectl from `make deps` come first (Debian's kubectl 1.20 is too old for `-k`).
export PATH := $(CURDIR)/target/tools:$(PATH)
# The tests that need the environment are #[ignore]d in a plain `cargo test`; these run them
# (`-- --include-ignored`), where a missing environment fails. KUBECONFIG's own cluster has
# no real node: the `real_node_*` tests are then left out, said so, unless
# OCISYNC_NODE_REQUIRED=1 (they then fail).
E2E_TEST = env=$$($(TESTENV) up --node); eval "$$env"; skip=; \
	if [[ -z $${OCISYNC_NODE:-} && $${OCISYNC_NODE_REQUIRED:-} != 1 ]]; then \
		echo "make: no real node (KUBECONFIG's cluster): the real_node_* tests are not run" >&2; \
		skip="--skip real_node_"; \
	fi; \
	if [[ $${OCISYNC_TESTENV_EXTERNAL_CLUSTER:-} == 1 ]]; then \
		echo "make: KUBECONFIG's cluster is not ours: the own_control_plane_* fault tests (which kill its API server and etcd) are not run" >&2; \
		skip="$$skip --skip own_control_plane_"; \
	fi; \
	OCISYNC_E2E_REQUIRED=1 $(CARGO) test --locked

.PHONY: help test deps lint unit e2e faults demo crds testenv-up testenv-down bench build release image fuzz fuzz-smoke

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test: deps lint fuzz-smoke ## everything CI runs: deps, fmt, clippy, a fuzz smoke, unit and end-to-end tests (real node included)
	$(E2E_TEST) -- --include-ignored $$skip

deps: $(PYENV)/.done ## install what the tests need besides cargo (apt packages come with testenv-up)

$(PYENV)/.done: e2e/python/requirements.txt e2e/deps.sh
	e2e/deps.sh $(PYENV)

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit: ## unit tests only, no environment needed (`cargo test` also runs the tests that need none)
	$(CARGO) test --locked --lib --bins

# Fuzzing (fuzz/run.sh): libFuzzer through libfuzzer-sys on the stable toolchain, nothing
# to install besides the crates. The smoke builds every target and runs each briefly from the
# committed seeds, so that the harnesses keep compiling and the seeds keep passing.
fuzz: ## run each fuzz target FUZZ_SECONDS (default 3600), one at a time; stats in target/fuzz-stats
	fuzz/run.sh campaign

fuzz-smoke: ## build the fuzz targets and run each FUZZ_SECONDS (default 15)
	fuzz/run.sh smoke

e2e: deps ## end-to-end tests against the local (or your KUBECONFIG's) environment
	$(E2E_TEST) --test 'e2e_*' -- --include-ignored $$skip

faults: deps ## the fault campaign (registry, control-plane, process, disk, node faults): writes bench/FAULTS.md
	e2e/faults/run.sh

testenv-up: ## start the local cluster (with a real node) and registries; prints export lines
	$(TESTENV) up --node

testenv-down: ## stop what testenv-up started
	$(TESTENV) down

crds: ## regenerate crds/ (and the chart's and kustomize's copies) from the Rust types
	$(CARGO) run --quiet -- crd --output-dir crds
	$(CARGO) run --quiet -- crd --output-dir charts/ocisync/crds
	$(CARGO) run --quiet -- crd --output-dir config/crd/bases

build: ## debug build
	$(CARGO) build --locked

release: ## optimised build
	$(CARGO) build --locked --release

demo: deps release ## ocisync as pods on the local real node: image, helm install, a Falco rules bundle to a ConfigMap and the node
	e2e/demo.sh

image: release ## the image without Docker, pushed to IMAGE=host:port/repo:tag (plain HTTP)
	@test -n "$(IMAGE)" || { echo "usage: make image IMAGE=127.0.0.1:5000/ocisync:dev" >&2; exit 2; }
	e2e/image.sh $(IMAGE)

bench: deps release ## every benchmark against its peers; table to stdout and bench/RESULTS.md
	e2e/bench/run.sh
