# diffar: two commands set up a fresh machine -- `make quickstart` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv quickstart test test-fast lint format bench manifests system-deps clean

help:
	@echo "make quickstart  install, then train and compare a tiny AR and MDM on this machine"
	@echo "make test        install, start the test servers, run the whole test suite"
	@echo "make test-fast   unit tests only (no multi-process training, no servers)"
	@echo "make lint        ruff (lint + format check)"
	@echo "make bench       benchmarks under bench/ (never part of make test)"
	@echo "make manifests   regenerate the CRDs in crds/ and the Helm chart from the models"

# The virtualenv, installed from the pinned constraints (an unpinned resolve of this stack can
# backtrack for 20+ minutes). torch==2.13.0 resolves to the CPU build on this kind of machine.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(STAMP)

# Debian packages the integration tests use (real Prometheus and Pushgateway).
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-pushgateway >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway >/dev/null; \
	  else echo "install Debian packages prometheus and prometheus-pushgateway (needs root)"; exit 1; fi; \
	fi
	@# The Debian packages start their daemons on the default ports; the tests start their own.
	@-if command -v systemctl >/dev/null; then systemctl stop prometheus prometheus-pushgateway 2>/dev/null; fi; true

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

manifests: $(STAMP)
	$(BIN)/diffar crds --out crds --out charts/diffar/crds --reference docs/crd-reference.md

quickstart: $(STAMP)
	$(BIN)/diffar quickstart

clean:
	rm -rf runs .diffar-cache bench/results/*.json
