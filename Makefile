# imgclf: every set-up step lives here, so a fresh machine needs only `make serve` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# `make serve GRPC_PORT=9001` or `IMGCLF_GRPC_PORT=9001 make serve`: the flags below are passed
# to imgclf serve, so each takes the IMGCLF_* variable of its setting when that is set.
HOST ?= $(or $(IMGCLF_HOST),127.0.0.1)
GRPC_PORT ?= $(or $(IMGCLF_GRPC_PORT),8001)
METRICS_PORT ?= $(or $(IMGCLF_METRICS_PORT),8002)
DEFAULT_MODEL ?= $(or $(IMGCLF_DEFAULT_MODEL),efficientnet_lite0)
MODEL_REPOSITORY ?= $(or $(IMGCLF_MODEL_REPOSITORY),models)
GEN := service/_generated
# The stubs come from this grpcio-tools (its protoc writes gencode 6.30.0), in a venv of its own:
# gencode 6.30.0 is accepted by every protobuf runtime from 6.30.0 to 7.x, the range that
# pyproject.toml states, while the project venv keeps the newest protobuf. Change the range and
# this pin together (`make proto`, commit the stubs).
GRPCIO_TOOLS := grpcio-tools==1.72.2
PROTOC_VENV := $(VENV)/protoc
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: help install install-all serve test lint format proto proto-check protobuf-floor models \
	docs clean

help:
	@echo "make serve   - serving install into $(VENV), then serve models/ on $(HOST):$(GRPC_PORT)"
	@echo "make test    - full install (train + dev extras), ruff, stub check, pytest"
	@echo "make models  - rebuild the bundled models with the training pipeline"
	@echo "make proto   - regenerate the gRPC stubs from proto/"
	@echo "make protobuf-floor - serve, classify and tritonclient tests on the oldest protobuf"

# The stamps make both installs idempotent and fast when nothing they depend on changed.
# The import name is `imgclf` (service/ and training/ mapped in pyproject.toml): a strict
# editable install links every file under build/__editable__*, a tree that type checkers and
# subprocesses see like an installed package; a file added or removed in a package folder
# changes the folder, which re-links.
EDITABLE := --config-settings editable_mode=strict
PACKAGE_DIRS := $(shell find service training -type d -not -name __pycache__ 2>/dev/null)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.serve-installed: pyproject.toml $(PACKAGE_DIRS) | $(VENV)/bin/python
	$(PIP) install --quiet -e . $(EDITABLE)
	touch $@

$(VENV)/.all-installed: pyproject.toml $(PACKAGE_DIRS) | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[train,bench,dev]' $(EDITABLE)
	touch $@ $(VENV)/.serve-installed

install: $(VENV)/.serve-installed
install-all: $(VENV)/.all-installed

serve: install
	$(VENV)/bin/imgclf serve --model-repository $(MODEL_REPOSITORY) --host $(HOST) \
		--grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --default-model $(DEFAULT_MODEL)

lint: install-all
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-all
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install-all lint proto-check deploy-check
	$(PY) -m pytest -q $(PYTEST_ARGS)

$(PROTOC_VENV)/.$(GRPCIO_TOOLS):
	$(PYTHON) -m venv $(PROTOC_VENV)
	$(PROTOC_VENV)/bin/python -m pip install --quiet '$(GRPCIO_TOOLS)'
	touch $@

# Generated stubs are committed (the serving image has no grpcio-tools); imports are rewritten
# to live under imgclf._generated (the folder service/_generated), and the Open Inference
# Protocol messages are built in a private descriptor pool (service/grpc/protopool.py) so that
# tritonclient can share the process.
define gen_stubs
	rm -rf $(1) && mkdir -p $(1)
	$(PROTOC_VENV)/bin/python -m grpc_tools.protoc -Iproto --python_out=$(1) --pyi_out=$(1) \
		--grpc_python_out=$(1) $(PROTOS)
	find $(1) -name '*.py' -exec sed -i -E \
		's/^from (imgclf|inference)(\.[a-z0-9_.]+)? import/from imgclf._generated.\1\2 import/' {} +
	find $(1)/inference -name '*_pb2.py' -exec sed -i -E \
		-e 's/_descriptor_pool\.Default\(\)/_protopool.POOL/' \
		-e 's/^(from google\.protobuf import descriptor_pool as _descriptor_pool)$$/\1\nfrom imgclf.grpc import protopool as _protopool/' {} +
	find $(1) -type d -exec touch {}/__init__.py \;
endef

proto: $(PROTOC_VENV)/.$(GRPCIO_TOOLS)
	$(call gen_stubs,$(GEN))

proto-check: $(PROTOC_VENV)/.$(GRPCIO_TOOLS)
	$(call gen_stubs,$(VENV)/proto-check)
	@diff -r -x __pycache__ $(GEN) $(VENV)/proto-check >/dev/null || \
		{ echo "Generated stubs in $(GEN) are stale: run 'make proto' and commit."; exit 1; }

# The other end of the protobuf range, in a venv of its own: imgclf on the oldest protobuf it
# supports (serve, classify, the CLI), then the current tritonclient beside it, which brings the
# protobuf 6 it asks for (the Open Inference Protocol tests drive the server with it).
FLOOR_VENV := $(VENV)/protobuf-floor
PROTOBUF_FLOOR := $(shell sed -nE 's/^ *"protobuf>=([0-9.]+),.*/\1/p' pyproject.toml)
FLOOR_TEST_DEPS := pytest pytest-timeout onnx scikit-image

protobuf-floor:
	rm -rf $(FLOOR_VENV) && $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet -e . 'protobuf==$(PROTOBUF_FLOOR)' \
		$(FLOOR_TEST_DEPS)
	$(FLOOR_VENV)/bin/python -c 'import google.protobuf as p; print("protobuf", p.__version__)'
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_server.py tests/integration/test_cli.py \
		tests/unit/service/test_protoversion.py
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade 'tritonclient[grpc]' 'protobuf<7'
	$(FLOOR_VENV)/bin/python -m pip check
	$(FLOOR_VENV)/bin/python -c 'import google.protobuf as p, importlib.metadata as m; \
		print("protobuf", p.__version__, "tritonclient", m.version("tritonclient"))'
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_open_inference.py tests/integration/test_cli.py

models: install-all
	$(PY) -m imgclf.training.bundled

docs: install
	$(PY) -m imgclf.doctables

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs build

include deploy/deploy.mk
