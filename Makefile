# imaging-lifecycle: two commands do all set-up on a fresh machine.
#   make run   installs, starts the embedded platform and shows the pipeline working
#   make test  installs and runs the whole suite (this is what CI runs)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CLI    := $(BIN)/imaging-lifecycle

export AIRFLOW__CORE__LOAD_EXAMPLES := False
export GX_ANALYTICS_ENABLED := False

.PHONY: install run stop demo test lint bench bench-large compose-check test-tools status clean-state help

help:
	@echo "make run | stop | demo | status | test | lint | bench | bench-large | compose-check | clean-state"

# Reinstall only when what we pin changes. Installs go through constraints.txt,
# our own full lock, the way Airflow's install guide uses constraints files.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(CLI) platform up
	$(CLI) demo --if-first-run
	@echo "Stop with: make stop"

stop:
	@if [ -x $(CLI) ]; then $(CLI) platform down; else echo "nothing installed, nothing to stop"; fi

demo: install
	$(CLI) demo

status: install
	-$(CLI) status

test: install compose-check test-tools lint
	$(BIN)/python -m pytest -q

# The habits that keep the structure (ARCHITECTURE.md): ruff's rules and the
# import-layering contracts in pyproject.toml. Either failing fails make test.
lint: install
	$(BIN)/ruff check --no-cache .
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python benchmarks/run_all.py

# The opt-in scale runs (hours, not minutes): the profile at 1,000 then 10,000 files into one catalog,
# the platform run at 10,000 files, and 100,000 secure purges really run.
bench-large: install
	BENCH_PROFILE_SIZES=1000,10000 BENCH_PIPELINE_N=10000 BENCH_PURGE_N=100000 $(BIN)/python benchmarks/run_all.py profile pipeline purge

# Real clients the tests use: Debian's chromium (driven by Playwright; no browser download) and
# dcmtk's storescu (a real DICOM sender, also over TLS); poppler's pdftoppm renders the compliance
# report's PDF; PostgreSQL's server binaries run the catalog and audit suites on PostgreSQL too
# (each test starts nothing system-wide: a private server under a temporary folder); PostgreSQL
# and redis-server also run the platform's celery mode (platform up --executor celery). Installed
# where apt is available.
test-tools:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v storescu >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	command -v pdftoppm >/dev/null 2>&1 || missing="$$missing poppler-utils"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's$$missing for the tests ..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null 2>&1 || true; \
	fi
	@command -v chromium >/dev/null 2>&1 && echo "chromium: $$(command -v chromium)" || echo "chromium not available: the browser step is skipped"
	@command -v storescu >/dev/null 2>&1 && echo "storescu: $$(command -v storescu)" || echo "dcmtk not available: the storescu tests skip"
	@command -v redis-server >/dev/null 2>&1 && echo "redis-server: $$(command -v redis-server)" || echo "redis-server not available: the celery platform tests skip"

# docker-compose.yml is checked statically: no Docker engine runs on these machines.
# Debian's docker-compose can validate it without an engine; the test suite also
# checks its structure, so a machine without apt still checks something real.
compose-check:
	@if ! command -v docker-compose >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's docker-compose for the static check ..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose) >/dev/null 2>&1 || true; \
	fi
	@if command -v docker-compose >/dev/null 2>&1; then \
		docker-compose --env-file .env.example -f docker-compose.yml config -q && echo "docker-compose.yml: valid"; \
	else echo "docker-compose not available: structure checked by tests/test_compose.py only"; fi

clean-state: stop
	rm -rf .state
