# Taskbus: `make up` runs the whole system here (no Docker needed); `make test` runs every test.
SHELL := /bin/bash
export UV_CACHE_DIR ?= $(CURDIR)/var/uv-cache
export PATH := $(HOME)/.local/bin:$(PATH)
PY := uv run --frozen --no-sync python
STACK := $(PY) -m deploy.local.stack

.PHONY: install up up-infra down status logs lint size format test test-unit test-integration bench

install: ## install what the local stack needs (cached under var/)
	@deploy/local/install.sh

up: install ## start everything, wait until healthy, print URLs
	@$(STACK) up

up-infra: install ## only Kafka, FerretDB, Redis and the SMTP sink
	@$(STACK) up --infra

down: ## stop everything; no process left behind
	@$(STACK) down

status: ## state and health of every part
	@$(STACK) status

logs: ## tail every log (make logs PART=kafka FOLLOW=1)
	@$(STACK) logs $(PART) $(if $(FOLLOW),-f)

lint: install ## ruff, ruff format --check, mypy --strict, import-linter, declared imports, sizes
	uv run --frozen --no-sync ruff check .
	uv run --frozen --no-sync ruff format --check .
	uv run --frozen --no-sync mypy .
	uv run --frozen --no-sync lint-imports
	$(PY) -m tools.check_deps
	$(PY) -m tools.check_size

size: ## no module in common/, services/, gateway/ over 350 lines, no function over 60
	$(PY) -m tools.check_size

format: install
	uv run --frozen --no-sync ruff check --fix .
	uv run --frozen --no-sync ruff format .

test: lint ## lint, then unit, integration and e2e tests against the real stack
	$(PY) -m pytest tests/unit
	$(STACK) with-infra -- $(PY) -m pytest tests/integration tests/e2e tests/security

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install
	$(STACK) with-infra -- $(PY) -m pytest tests/integration tests/e2e

.PHONY: test-fault
test-fault: install ## fault injection (database stopped, overload, relay backlog) against the real stack
	$(STACK) with-infra -- $(PY) -m pytest tests/fault

.PHONY: producer
producer: ## an event producer on the local broker, its credentials printed: make producer NAME=crm [TYPES=task.create.v1,...] [USERS='*'|id,...] [ROTATE=1]
	@$(PY) -m deploy.local.producer "$(NAME)" $(if $(TYPES),--types "$(TYPES)") $(if $(USERS),--users "$(USERS)") $(if $(ROTATE),--rotate)

.PHONY: dlq-list dlq-replay
dlq-list: ## the notifier's dead letters, one JSON line each (env as for the service)
	@$(PY) -m services.notifier.dlq list

dlq-replay: ## re-queue dead letters not replayed yet (EVENT=<id> replays just that event)
	@$(PY) -m services.notifier.dlq replay $(if $(EVENT),--event-id $(EVENT))

.PHONY: bench-jwt
bench-jwt: ## RS256 vs EdDSA vs ES256 sign/verify and login-check timing -> docs/bench-jwt.md
	@$(PY) -m bench.bench_jwt

.PHONY: bench-gateway
bench-gateway: ## gateway vs a bare ASGI echo under wrk (needs wrk, Kafka, Redis) -> docs/bench-gateway.md
	@$(PY) -m bench.bench_gateway

.PHONY: bench-tasks
bench-tasks: ## tasks CRUD throughput, write-lock cost, outbox relay lag (needs Kafka, FerretDB) -> docs/bench-tasks.md
	@$(PY) -m bench.bench_tasks

.PHONY: bench-relay
bench-relay: ## outbox relay events/s vs tasks creates/s in one run (needs Kafka, FerretDB) -> docs/bench-relay.md
	@$(PY) -m bench.bench_relay

.PHONY: bench-notifier
bench-notifier: ## notifier mails/s, 1 vs 2 replicas (needs Kafka, FerretDB) -> docs/bench-notifier.md
	@$(PY) -m bench.bench_notifier

.PHONY: bench-database
bench-database: install ## FerretDB stock vs patched: _id lookups and updates at 1k/10k/50k documents, tasks GET by id -> docs/bench-database.md
	@$(PY) -m bench.bench_database

.PHONY: bench-caches
bench-caches: ## the gateway's token/L1 caches and the client's ETag cache, µs per call (no services needed)
	@$(PY) -m bench.bench_gateway_caches
	@$(PY) -m bench.bench_client_cache

.PHONY: bench
bench: bench-jwt bench-gateway bench-tasks bench-relay bench-notifier bench-database bench-caches ## every benchmark; results under docs/

.PHONY: event-schemas
event-schemas: ## regenerate docs/events/<type>.json and docs/asyncapi.json from the models (refuses a breaking change)
	@$(PY) -m tools.event_schemas
