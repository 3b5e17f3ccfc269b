# AI Spine — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= uv
PYTEST_ARGS ?=
BENCH_ARGS ?=
SCENARIO_ARGS ?=
CHAOS_ARGS ?=
# the operator's Kafka login (the admin's, on the secured broker) for tools run from here
WITH_INFRA_ENV = if [ -f .spine/infra.env ]; then set -a; . .spine/infra.env; set +a; fi;

.PHONY: screenshots help install infra infra-down infra-status browser up down test test-unit lint asyncapi clean rebuild bench bench-scenarios chaos demo agent-credentials

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: ## install uv and the Python workspace
	@bash scripts/bootstrap.sh

infra: ## start (or reuse) Kafka, PostgreSQL and Redis; idempotent
	@bash scripts/infra.sh up

infra-down: ## stop the infrastructure this project started; idempotent
	@bash scripts/infra.sh down

infra-status: ## show what runs
	@bash scripts/infra.sh status

browser: ## install headless Chromium for the browser tests (Debian's chromium); idempotent
	@bash scripts/browser.sh

up: install infra ## run the stack (infrastructure + services)
	@bash scripts/stack.sh up

down: ## stop everything `make up` started
	@bash scripts/stack.sh down
	@bash scripts/infra.sh down

agent-credentials: install ## issue an agent: signing key, tasks topic, Kafka principal, key+owner on the bus (AGENT=<id> [OWNER=<user_id>|system])
	@test -n "$(AGENT)" || { echo "usage: make agent-credentials AGENT=<agent_id> [OWNER=<user_id>|system]" >&2; exit 2; }
	@$(WITH_INFRA_ENV) $(UV) run --frozen spine-admin issue-agent $(AGENT) $(if $(OWNER),--owner $(OWNER))

demo: ## the original demo over HTTP: credit_analysis with two input turns, live (after `make up`)
	$(UV) run --frozen python scripts/demo.py

test: install infra browser ## the whole suite against real Kafka, PostgreSQL and Redis, and a real browser
	$(UV) run --frozen --group bench pytest $(PYTEST_ARGS)

test-unit: install ## the fast part: no I/O
	$(UV) run --frozen --group bench pytest -m "not integration" $(PYTEST_ARGS)

lint: install ## ruff format check and lint, the import contracts, mypy (pyproject.toml)
	$(UV) run --frozen ruff format --check libs services agents tests bench
	$(UV) run --frozen ruff check libs services agents tests bench
	$(UV) run --frozen lint-imports
	$(UV) run --frozen mypy

rebuild: install ## rebuild projections from Kafka and swap them in (SERVICE=name; REBUILD_ARGS=--check-only)
	@UV=$(UV) bash scripts/rebuild.sh $(SERVICE) $(REBUILD_ARGS)

bench: install ## AI Spine beside the frozen floor and two Celerys, in rounds, checked; < 10 min (after `make up`)
	$(UV) run --frozen --group bench python -m bench.run $(BENCH_ARGS)

bench-scenarios: install ## open-loop rates, a tenant during a burst, kill -9 mid-load; < 15 min (after `make up`; SCENARIO_ARGS=--help)
	$(UV) run --frozen --group bench python -m bench.scenarios $(SCENARIO_ARGS)

chaos: install infra ## kill -9 every service in turn + restart Kafka under 300 executions, < 10 min (CHAOS_ARGS=--seed 7)
	$(UV) run --frozen python -m tests.chaos.run $(CHAOS_ARGS)

screenshots: install browser ## the console's pages as PNGs in docs/img (after `make up`)
	$(UV) run --frozen python scripts/console_screenshots.py

asyncapi: install ## regenerate docs/asyncapi.yaml from the contracts
	$(UV) run --frozen python -m spine_contracts.asyncapi --write docs/asyncapi.yaml

clean: ## remove caches (keeps .spine data)
	rm -rf .pytest_cache .ruff_cache .hypothesis
