# The README's commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODES  ?= 3
RESP_BASE_PORT ?= 6379
PYTEST_ARGS ?=

.PHONY: run test setup test-unit test-cluster test-k8s bench lint install system-deps k8s-tools image clean \
	nemesis kube-up kube-down seaweedfs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

## run: start a local cluster of $(NODES) real node processes (Ctrl-C stops it); HTTP on
## 8484.., RESP on $(RESP_BASE_PORT).. (RESP_BASE_PORT=0: none), internal RPC on HTTP + 1000
run: $(STAMP)
	$(BIN)/limedb cluster up --nodes $(NODES) --resp-base-port $(RESP_BASE_PORT)

## system-deps: Debian packages the tests drive (redis, nftables, wrk, buildah, chromium,
## containerd, runc, ...)
system-deps:
	bash scripts/system-deps.sh

## k8s-tools: Kubernetes (control plane, kubelet, kube-proxy, kubectl), CoreDNS, etcd, helm
## built into .cache/k8s/bin, and the images of the node's own pods (pause, CoreDNS, busybox)
k8s-tools: system-deps
	bash scripts/k8s-tools.sh

## seaweedfs: SeaweedFS's `weed` (the real S3 server of the backup tests) built into
## .cache/seaweedfs/bin from the Go module proxy (pinned in tools/seaweedfs/go.mod)
seaweedfs:
	bash scripts/seaweedfs.sh

## image: the LimeDB image from Dockerfile with buildah, tagged localhost/limedb:dev and written
## to .cache/image/limedb-dev.tar (cached by the hash of its inputs; prints its size)
image: system-deps
	bash scripts/image.sh

## kube-up: a real one-node Kubernetes on this machine (reuses a running one); prints
## KUBECONFIG=<path> last. kube-down stops it and puts the machine back (docs/kubernetes.md)
kube-up: system-deps k8s-tools
	bash scripts/kube-up.sh

kube-down:
	bash scripts/kube-down.sh

## test: install everything the tests need, then run the whole suite
## (scripts/test-lanes.sh: the Kubernetes tier and the longest campaigns run beside the rest)
test: setup
	$(BIN)/ruff check .
	bash scripts/test-lanes.sh $(PYTEST_ARGS)

## setup: everything `make test` needs, the independent parts side by side (-j4): the venv,
## the Debian packages, the Go builds (Kubernetes, SeaweedFS) and the image. On a fresh machine
## the module downloads and pip's overlap the compilers; warm, each part is a cache check.
setup:
	$(MAKE) --no-print-directory -j4 $(STAMP) system-deps k8s-tools seaweedfs image

# The suite in tiers, by marker (tests/conftest.py makes every test that starts a process
# carry one): in-process only; real node processes, namespaces, redis; the control plane.
UNIT_TESTS := not (process or cluster or faults or faketime or redis or nemesis or k8s or browser)

## test-unit: the in-process tests only (no process, no root), seconds to a few minutes
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "$(UNIT_TESTS)" $(PYTEST_ARGS)

## test-cluster: the tests that start real node processes, namespaces or redis-server
test-cluster: $(STAMP) system-deps seaweedfs
	$(BIN)/python -m pytest -m "not ($(UNIT_TESTS)) and not k8s" $(PYTEST_ARGS)

## test-k8s: the Kubernetes tier against the control plane built by scripts/k8s-tools.sh
test-k8s: $(STAMP) system-deps k8s-tools image
	$(BIN)/python -m pytest -m k8s $(PYTEST_ARGS)

## bench: every benchmark, each printing ratios against its anchor
bench: $(STAMP) system-deps
	$(BIN)/python benchmarks/run_all.py

## nemesis: one long fault campaign (or a failing seed's replay): make nemesis SEED=7 MINUTES=10
SEED    ?= 1
MINUTES ?= 10
nemesis: $(STAMP) system-deps
	$(BIN)/python tests/nemesis/run_nemesis.py --seed $(SEED) --minutes $(MINUTES)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
