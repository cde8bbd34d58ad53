# tiermesh: `make run` runs the whole mesh, `make test` runs every test (both from a fresh clone).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export LITELLM_LOCAL_MODEL_COST_MAP := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PROTOS := $(shell find proto -name '*.proto' | sort)
GATEWAY_PROTOS := $(shell find gateway/proto -name '*.proto' | sort)

.PHONY: help run test setup proto lint fmt unit integration bench bench-knowledge bench-router bench-startup train-router clean

## help: list these targets
help:
	@awk -F': ' '/^## / { sub(/^## /, ""); printf "  make %-16s %s\n", $$1, substr($$0, length($$1) + 3) }' $(MAKEFILE_LIST)

## setup: create .venv and install tiermesh with its dev tools (re-runs when pyproject.toml changes)
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=24'
	# torch first, pinned: the CPU build (a file on this machine's disk); a resolver left to pick
	# torch for the embedding libraries could pull a multi-GB CUDA build.
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) -m pip install -q -e '.[dev,knowledge]'
	touch $@

## run: set up, then run the whole mesh on embedded defaults (Ctrl-C stops it)
run: setup
	$(VENV)/bin/tiermesh up --ingest data/knowledge/helpcenter

## proto: generate Python code (and TypeScript when the web app's tools are installed)
proto: setup
	rm -rf gen/python/tiermesh gen/python/tiermesh_rls
	mkdir -p gen/python
	$(PY) -m grpc_tools.protoc -I proto \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=gen/python --mypy_out=quiet:gen/python --grpc_python_out=gen/python --mypy_grpc_out=quiet:gen/python \
	  $(PROTOS)
	$(PY) -m grpc_tools.protoc -I gateway/proto \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=gen/python --mypy_out=quiet:gen/python --grpc_python_out=gen/python --mypy_grpc_out=quiet:gen/python \
	  $(GATEWAY_PROTOS)
	if [ -x web/node_modules/.bin/protoc-gen-es ]; then $(VENV)/bin/buf generate; fi

## lint: buf lint + format check, ruff, mypy, import contracts (the layers of the code)
lint: setup
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code
	$(VENV)/bin/ruff check services gateway tests bench
	$(VENV)/bin/ruff format --check services gateway tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

## fmt: format the code and apply ruff's safe fixes
fmt: setup
	$(VENV)/bin/buf format -w
	$(VENV)/bin/ruff format services gateway tests bench
	$(VENV)/bin/ruff check --fix services gateway tests bench

## test: set up, then lint and run every test (generated-code drift included)
test: setup lint
	$(PY) -m pytest

## unit: the fast tests: units and contracts (no service runs)
unit: setup
	$(PY) -m pytest tests/unit tests/contract

## integration: the tests on real parts: meshes, PostgreSQL, Redis, Qdrant, Envoy, the attack suite
integration: setup
	$(PY) -m pytest tests/integration tests/analytics tests/knowledge tests/security

## bench: benchmarks that print figures
bench: setup
	$(PY) -m bench

## bench-knowledge: retrieval quality (recall@1, recall@5, MRR) on the sample help centre's questions
bench-knowledge: setup
	$(PY) -m bench.knowledge_eval

## bench-router: routing accuracy on the held-out split, confusion matrices, decision latency
bench-router: setup
	$(PY) -m bench.router_eval

## bench-startup: seconds from `tiermesh up` to healthy (and to the help centre ingested), RSS per part
bench-startup: setup
	$(PY) -m bench.startup

## train-router: retrain the intent and complexity models from data/routing (weights are committed)
train-router: setup
	$(PY) -m services.router.train

## clean: remove the virtualenv and tool caches
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
