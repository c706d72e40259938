# The README's commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODES  ?= 3
PYTEST_ARGS ?=

.PHONY: run test bench lint install system-deps k8s-tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

## run: start a local cluster of $(NODES) real node processes (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/limedb cluster up --nodes $(NODES)

## system-deps: Debian packages the tests drive (redis, etcd, nftables, wrk)
system-deps:
	bash scripts/system-deps.sh

## k8s-tools: kube-apiserver, kube-controller-manager, helm, etcd built into .cache/
k8s-tools:
	bash scripts/k8s-tools.sh

## test: install everything the tests need, then run the whole suite
test: $(STAMP) system-deps k8s-tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: every benchmark, each printing ratios against its anchor
bench: $(STAMP) system-deps
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
