VENV ?= .venv
PY := $(VENV)/bin/python
# HOST and PORT, when given (`make run PORT=9000`), become flags; otherwise the server reads the environment
# and .env as it always does. Client targets talk to the address the server would use (EMBEDSERVER_URL wins).
SERVE_FLAGS = $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))
URL = $(or $(EMBEDSERVER_URL),$(shell $(PY) -c 'from embedserver.cli.client import default_url; print(default_url())'))
SOURCES := embedserver embedserver_testing tests scripts benchmarks examples

.PHONY: help install install-dev run dev health test test-fast lint format clean reference loadtest benchmark benchmark-full fuzz
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F '\t' '{printf "  make %-15s %s\n", $$1, $$2}'

# Stamps: `make run` and `make test` reinstall only when the project's requirements change.
$(VENV)/.installed: pyproject.toml scripts/install.sh
	scripts/install.sh
	touch $@

$(VENV)/.installed-dev: pyproject.toml scripts/install.sh
	scripts/install.sh dev
	touch $@ $(VENV)/.installed

install:  ## install the server with the right MLX backend for this machine
	scripts/install.sh
	touch $(VENV)/.installed

install-dev:  ## install with test and lint tools
	scripts/install.sh dev
	touch $(VENV)/.installed-dev $(VENV)/.installed

run: $(VENV)/.installed  ## serve (settings from flags, the environment or .env; `embedserver serve --help`)
	$(PY) -m embedserver serve $(SERVE_FLAGS)

dev: $(VENV)/.installed-dev  ## serve with auto-reload and DEBUG logs
	$(PY) -m embedserver serve --dev-mode true $(SERVE_FLAGS)

health: $(VENV)/.installed  ## ask a running server how it is (exit 0 ready, 1 not ready, 3 no server)
	@$(PY) -m embedserver health --url $(URL)

test: $(VENV)/.installed-dev  ## the whole test suite
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed-dev  ## tests without starting server processes
	$(PY) -m pytest -q -m "not slow"

fuzz:  ## schemathesis against a running server, 500 examples per operation: fails on any 5xx
	$(VENV)/bin/st run $(URL)/openapi.json --checks not_a_server_error --max-examples 500 --report-dir results/schemathesis

lint: $(VENV)/.installed-dev  ## ruff, ruff format --check, mypy --strict, and the import rules (import-linter)
	$(PY) -m ruff check $(SOURCES)
	$(PY) -m ruff format --check $(SOURCES)
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

format:  ## ruff format and ruff's fixes
	$(PY) -m ruff format $(SOURCES)
	$(PY) -m ruff check --fix $(SOURCES)

benchmark:  ## quick HTTP benchmark (spawns a server with MODEL_NAME): latency, throughput at 1/8/32 clients
	$(VENV)/bin/pip install -q -e ".[load]"
	$(PY) -m benchmarks.http_bench --quick

benchmark-full:  ## full benchmark: 1-256 clients, JSON and PNG under results/
	$(VENV)/bin/pip install -q -e ".[load]"
	mkdir -p results
	$(PY) -m benchmarks.http_bench --iterations 200 --workers 8 --json results/benchmark.json --plot results/benchmark.png

loadtest:  ## locust against a running server: load found by a ramp, 60 s; fails on 5xx and wrong answers
	$(VENV)/bin/pip install -q -e ".[load]"
	$(VENV)/bin/locust -f benchmarks/locustfile.py --host $(URL) --headless --only-summary

reference:  ## regenerate tests/fixtures/reference.json (needs torch: pip install torch==2.13.0)
	$(PY) scripts/make_reference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
