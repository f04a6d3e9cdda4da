# Two commands set everything up on a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all test demo deps venv lint typecheck unit bench chaos streams-export clean

all: test

$(BIN)/batchyard: pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/batchyard

# PostgreSQL server binaries: found on PATH or in Debian's versioned directory,
# installed through apt only when missing.
deps: venv
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "postgresql: server binaries present"; \
	else \
	  echo "postgresql: installing server binaries"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	fi

lint: venv
	$(BIN)/ruff check events consumers sandbox tests

typecheck: venv
	$(BIN)/mypy

unit: deps
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: deps lint typecheck unit

demo: deps
	$(BIN)/batchyard demo

bench: deps
	$(BIN)/pip install -q -e '.[test,bench]'
	PYTHONWARNINGS=ignore $(BIN)/python -m tests.benchmarks

# The chaos suite's full profile (CI runs its short profile inside `make test`).
chaos: deps
	PYTHONWARNINGS=ignore $(BIN)/python -m tests.chaos --profile full --out build/chaos-report.json $(CHAOS_ARGS)

streams-export: venv
	$(BIN)/batchyard streams export deploy/nats

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
