# Commands that set everything up on a fresh Debian machine: `make dev`, `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all test demo dev deps venv lint typecheck unit bench chaos streams-export upgrade clean

all: test

# Installs come from uv.lock (hashed, every version pinned); pyproject.toml keeps the
# ranges. uv itself is pinned here and lives in its own small venv.
UV_VERSION := 0.13.9
UV         := .uv/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)

$(UV):
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip; }
	$(PYTHON) -m venv .uv
	.uv/bin/pip install -q uv==$(UV_VERSION)

$(BIN)/batchyard: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra test --python $(PYTHON)
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
# promtool, for tests/ops/test_observability.py: Debian ships it in `prometheus`, whose
# server the tests do not need, so a service the package starts is stopped again.
	@if command -v promtool >/dev/null 2>&1; then \
	  echo "promtool: present"; \
	else \
	  echo "promtool: installing Debian's prometheus package"; \
	  $(SUDO) apt-get update -qq && \
	  { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus && \
	    { ! command -v systemctl >/dev/null 2>&1 || $(SUDO) systemctl disable --now prometheus >/dev/null 2>&1 || true; }; } || \
	  echo "promtool: could not be installed; the tests that need it will skip and say so"; \
	fi
# Node.js and the reference AsyncAPI parser (tests/asyncapi, from its package-lock.json),
# for tests/ops/test_asyncapi.py.
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  echo "node: $$(node --version) present"; \
	else \
	  echo "node: installing nodejs and npm"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm || \
	  echo "node: could not be installed; the AsyncAPI parser check will skip and say so"; \
	fi
	@if [ tests/asyncapi/node_modules/.package-lock.json -nt tests/asyncapi/package-lock.json ]; then \
	  echo "@asyncapi/parser: present"; \
	elif command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/asyncapi --no-audit --no-fund --loglevel=error || \
	  echo "@asyncapi/parser: could not be installed; its check will skip and say so"; \
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

# A stack that stays up until Ctrl-C, its data kept in .batchyard/ (DEV_ARGS=--fresh: clean).
dev: deps
	$(BIN)/batchyard dev $(DEV_ARGS)

bench: deps
	$(UV) sync --frozen --extra test --extra bench --python $(PYTHON)
	PYTHONWARNINGS=ignore $(BIN)/python -m tests.benchmarks

# The chaos suite's full profile (CI runs its short profile inside `make test`).
chaos: deps
	PYTHONWARNINGS=ignore $(BIN)/python -m tests.chaos --profile full --out build/chaos-report.json $(CHAOS_ARGS)

streams-export: venv
	$(BIN)/batchyard streams export deploy/nats
	$(BIN)/python -m events.permissions > deploy/nats/cluster/auth.conf

# Re-lock to the newest versions the ranges allow, install them and run the tests; the
# new uv.lock is then a deliberate commit.
upgrade: | $(UV)
	$(UV) lock --upgrade
	$(UV) sync --frozen --extra test --python $(PYTHON)
	$(MAKE) test

clean:
	rm -rf $(VENV) .uv .pytest_cache .mypy_cache .ruff_cache tests/asyncapi/node_modules
