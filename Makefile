# imgclf: every set-up step lives here, so a fresh machine needs only `make serve` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
DEFAULT_MODEL ?= efficientnet_lite0
GEN := service/_generated
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: help install install-all serve test lint format proto proto-check models docs clean

help:
	@echo "make serve   - serving install into $(VENV), then serve models/ on $(HOST):$(GRPC_PORT)"
	@echo "make test    - full install (train + dev extras), ruff, stub check, pytest"
	@echo "make models  - rebuild the bundled models with the training pipeline"
	@echo "make proto   - regenerate the gRPC stubs from proto/"

# The stamps make both installs idempotent and fast when pyproject.toml has not changed.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.all-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[train,bench,dev]'
	touch $@ $(VENV)/.serve-installed

install: $(VENV)/.serve-installed
install-all: $(VENV)/.all-installed

serve: install
	$(VENV)/bin/imgclf serve --model-repository models --host $(HOST) \
		--grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --default-model $(DEFAULT_MODEL)

lint: install-all
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-all
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install-all lint proto-check deploy-check
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Generated stubs are committed (the serving image has no grpcio-tools); imports are rewritten
# to live under imgclf._generated, and the Open Inference Protocol messages are built in a
# private descriptor pool (service/grpc/protopool.py) so that tritonclient can share the process.
define gen_stubs
	rm -rf $(1) && mkdir -p $(1)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(1) --pyi_out=$(1) \
		--grpc_python_out=$(1) $(PROTOS)
	find $(1) -name '*.py' -exec sed -i -E \
		's/^from (imgclf|inference)(\.[a-z0-9_.]+)? import/from imgclf._generated.\1\2 import/' {} +
	find $(1)/inference -name '*_pb2.py' -exec sed -i -E \
		-e 's/_descriptor_pool\.Default\(\)/_protopool.POOL/' \
		-e 's/^(from google\.protobuf import descriptor_pool as _descriptor_pool)$$/\1\nfrom imgclf.grpc import protopool as _protopool/' {} +
	find $(1) -type d -exec touch {}/__init__.py \;
endef

proto: install-all
	$(call gen_stubs,$(GEN))

proto-check: install-all
	$(call gen_stubs,$(VENV)/proto-check)
	@diff -r -x __pycache__ $(GEN) $(VENV)/proto-check >/dev/null || \
		{ echo "Generated stubs in $(GEN) are stale: run 'make proto' and commit."; exit 1; }

models: install-all
	$(PY) -m imgclf.training.bundled

docs: install
	$(PY) -m imgclf.doctables

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs

include deploy/deploy.mk
