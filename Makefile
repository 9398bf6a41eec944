# Everyday commands. Compose targets run the stack in Docker; CPU=1 adds the CPU-only override.

COMPOSE ?= docker compose
COMPOSE_FILES := -f docker-compose.yml$(if $(CPU), -f docker-compose.cpu.yml)

.PHONY: help setup up down logs migrate test lint format bench fuzz soak

help: ## List these targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install Kiln and its tools from the lock file; start a .env from .env.example
	uv sync --frozen
	test -f .env || cp .env.example .env

up: ## Build and start the stack in the background
	$(COMPOSE) $(COMPOSE_FILES) up -d --build

down: ## Stop the stack (its volumes stay)
	$(COMPOSE) $(COMPOSE_FILES) down

logs: ## Follow the logs of every service
	$(COMPOSE) $(COMPOSE_FILES) logs -f --tail=100

migrate: ## Apply database migrations in the stack
	$(COMPOSE) $(COMPOSE_FILES) run --rm migrate

test: ## The test suite (PostgreSQL too when KILN_TEST_DATABASE_URL is set)
	uv run pytest

lint: ## Lint, check formatting and type-check
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy .

format: ## Fix what ruff can fix, then format
	uv run ruff check --fix .
	uv run ruff format .

bench: ## Every benchmark beside its anchor: bench/RESULTS.md, bench/plots/ and the README table
	uv run python -m bench.run_all

fuzz: ## The property-based fuzz tests, with more examples than the suite runs
	KILN_FUZZ_EXAMPLES=500 uv run pytest tests/fuzz -q

soak: ## A long run under steady load
	uv run python -m bench.soak
