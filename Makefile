# AI Spine — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= uv
PYTEST_ARGS ?=

.PHONY: help install infra infra-down infra-status up down test test-unit lint asyncapi clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: ## install uv and the Python workspace
	@bash scripts/bootstrap.sh

infra: ## start (or reuse) Kafka, PostgreSQL and Redis; idempotent
	@bash scripts/infra.sh up

infra-down: ## stop the infrastructure this project started; idempotent
	@bash scripts/infra.sh down

infra-status: ## show what runs
	@bash scripts/infra.sh status

up: install infra ## run the stack (infrastructure + services)
	@bash scripts/stack.sh up

down: ## stop everything `make up` started
	@bash scripts/stack.sh down
	@bash scripts/infra.sh down

test: install infra ## the whole suite against real Kafka, PostgreSQL and Redis
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: install ## the fast part: no I/O
	$(UV) run --frozen pytest -m "not integration" $(PYTEST_ARGS)

lint: install ## ruff format check and lint
	$(UV) run --frozen ruff format --check libs services tests
	$(UV) run --frozen ruff check libs services tests

asyncapi: install ## regenerate docs/asyncapi.yaml from the contracts
	$(UV) run --frozen python -m spine_contracts.asyncapi --write docs/asyncapi.yaml

clean: ## remove caches (keeps .spine data)
	rm -rf .pytest_cache .ruff_cache .hypothesis
