# Two commands set up and run everything on a fresh machine: `make pipeline` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# The offline TLC mirror beside the project, when it is there; otherwise the TLC address.
TLC_SOURCE ?= $(abspath $(wildcard ../shared/nyc-taxi))
export TLC_SOURCE
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")

.PHONY: help env bytecode pipeline prefect-status prefect-stop test test-fast lint bench services services-down \
	services-status

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on CI) nothing is ever cached, and
# every stage process and `dvc repro` recompiles its imports (no-op repro 1.6 s instead of 0.7 s).
# The stamp: `uv sync` checks every installed file (0.5 s) even when nothing changed, so it
# runs only when uv.lock or pyproject.toml is newer than the last sync (or .venv is new).
env: .venv/.synced ## install uv if missing, then the locked environment (.venv, from uv.lock)

.venv/.synced: uv.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet --user uv
	@$(UV) sync --frozen --quiet --compile-bytecode
	@touch $@

# The project's own modules, compiled once per change: with PYTHONDONTWRITEBYTECODE set (as
# here, on CI and in many container images) Python never caches them, and every stage process
# compiled the project modules it imports (train: 0.10-0.16 s, 0.05-0.06 s from .pyc). A stamp,
# so that make alone sees nothing changed (Python's start would cost every make pipeline 0.15 s);
# compileall skips up-to-date files, and Python never uses a stale .pyc (it checks the source's
# mtime and size). .dvcignore keeps __pycache__ out of the stages' folder dependency.
CODE_FILES := $(wildcard */*.py)

bytecode: .venv/.compiled ## compile the project's modules (make pipeline, test and bench do it first)

.venv/.compiled: $(CODE_FILES) .venv/.synced
	@$(UV) run --frozen python -m compileall -q $(sort $(dir $(CODE_FILES)))
	@touch $@

pipeline: env bytecode ## run the whole pipeline on the real data (dvc repro: only what changed)
	$(UV) run --frozen python -m flows.pipeline

prefect-status: ## the Prefect server make pipeline keeps for this project (URL, last run)
	@$(UV) run --frozen python -m flows.local_server status

prefect-stop: ## stop that server now (it also stops after 30 min without a run)
	@$(UV) run --frozen python -m flows.local_server stop

# Tests run on up to 4 processes (pytest-xdist), a test file per process: a file's tests share
# its fixtures (the team stack, one per module) and run in their order. Most of the slow tests
# wait on dvc, servers and subprocesses: 2 processes on 2 cores took 1,410 s, 1 took 2,299 s.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))

PARALLEL := -n $(TEST_WORKERS) --dist loadfile

test: env bytecode ## run every test, the slow end-to-end ones included
	$(UV) run --frozen pytest -m "slow or not slow" $(PARALLEL) --durations=25

test-fast: env bytecode ## run the unit tests only
	$(UV) run --frozen pytest $(PARALLEL)

lint: env ## ruff lint and format check
	$(UV) run --frozen ruff check . && $(UV) run --frozen ruff format --check .

bench: env bytecode ## run every benchmark (about 10 min); results in benchmarks/results/
	$(UV) run --frozen python -m benchmarks.run

# Team mode (services/README-team.md): real servers on 127.0.0.1, state and logs in .services/.
services: env ## start PostgreSQL, SeaweedFS (S3), MLflow and Prefect servers, 2 workers
	$(UV) run --frozen python -m services up

services-down: ## stop every team service (bounded waits), free their ports
	$(UV) run --frozen python -m services down

services-status: ## one line per team service (exit 3 when one is down)
	$(UV) run --frozen python -m services status
