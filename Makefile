# The two commands of README: `make run` (the whole local stack) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/development.txt
PRODUCTION_LOCK := requirements/production.txt
export DJANGO_SETTINGS_MODULE := cutemarkets.settings

.PHONY: run test lint serve test-postgres bench bench-quick setup system-deps test-deps lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Exactly the lock (the tested versions, pip and setuptools included; `pip check`: nothing missing), then the project
# itself, built with that setuptools.
$(STAMP): $(LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/pip check
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate both locks from pyproject.toml, keeping every pin its range still allows (README, "The two commands").
# LOCK_ARGS=--upgrade moves all of them to the newest releases, LOCK_ARGS="--upgrade-package daphne" one.
PIP_COMPILE = $(BIN)/pip-compile --quiet --allow-unsafe --no-emit-find-links --no-emit-index-url --strip-extras
lock: $(STAMP)
	$(PIP_COMPILE) --all-build-deps --extra=bench --extra=dev --extra=postgres --output-file=$(LOCK) \
		$(LOCK_ARGS) pyproject.toml
	$(PIP_COMPILE) --constraint=$(LOCK) --extra=postgres --output-file=$(PRODUCTION_LOCK) pyproject.toml

setup: system-deps $(STAMP)

# A private redis-server is started by the stack; install it when the machine has none and REDIS_URL is unset.
system-deps:
	@if [ -z "$$REDIS_URL" ] && ! command -v redis-server >/dev/null; then \
		echo "Installing redis-server with apt-get..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	fi

# promtool (Debian's prometheus package) checks deploy/prometheus and the dashboard's queries in the tests.
test-deps:
	@if ! command -v promtool >/dev/null; then \
		echo "Installing prometheus (for promtool) with apt-get..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus >/dev/null; \
	fi

run: setup
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python -m devstack.run

test: setup test-deps
	@if [ -n "$$REDIS_URL" ]; then \
		DJANGO_DEBUG=1 $(BIN)/pytest $(PYTEST_ARGS); \
	else \
		DJANGO_DEBUG=1 $(BIN)/python -m devstack.redis_server -- $(BIN)/pytest $(PYTEST_ARGS); \
	fi

# The linter and the type check (configured in pyproject.toml); CI runs them before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Production mode, as in the container: migrate, collectstatic, then daphne (README, Deploying).
serve: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" deploy/entrypoint.sh start

# The database-facing tests, and the containers' commands, on a private PostgreSQL (Debian's postgresql package).
POSTGRES_TESTS ?= tests/accounts tests/streaming/gateway/test_consumer_admission.py tests/e2e/test_admission.py \
	tests/e2e/test_deployment.py
test-postgres: setup
	$(BIN)/python -m devstack.postgres_server -- \
		$(MAKE) --no-print-directory test PYTEST_ARGS="$(POSTGRES_TESTS) $(PYTEST_ARGS)"

# Benchmarks (BENCHMARKS.md): the full run (~25 min) writes bench/results/ and the plot; the quick one takes ~60 s.
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: setup
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
