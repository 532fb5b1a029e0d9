# Developer workflow. Each target is a thin wrapper around a script in scripts/.
# `make run` and `make test` are all you need; `make` alone lists the targets.
#
# Variables can be passed through, e.g.:
#   make run PORT=9000 HOST=0.0.0.0      make test ARGS="-k login -x"
# Variables given on the make command line are exported to the scripts.
#
# To add a target: write `name: ## one-line help` and call a script; list it
# in .PHONY. `make help` picks it up automatically.

.DEFAULT_GOAL := help
.PHONY: help run serve worker test lint lock migrate clean

# Extra arguments for the script behind run/test (uvicorn / pytest options).
ARGS ?=

help: ## List the targets
	@echo "Usage: make <target> [VAR=value ...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[A-Za-z0-9_.-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## Start the app (venv, deps, .env, migrations, uvicorn; HOST/PORT)
	scripts/run.sh $(ARGS)

serve: ## Production: migrations once, then uvicorn workers (HOST/PORT/WORKERS; needs SECRET_KEY)
	scripts/serve.sh $(ARGS)

worker: ## Production: one job worker (RQ; needs REDIS_URL); run any number, anywhere
	scripts/worker.sh $(ARGS)

test: ## Lint + tests on embedded and PostgreSQL+Redis backends (ARGS -> pytest)
	scripts/test.sh $(ARGS)

lint: ## Lint only: ruff check, ruff format --check, mypy
	scripts/lint.sh

lock: ## Regenerate requirements*.lock (hashes) from requirements*.txt (ARGS -> uv pip compile)
	scripts/lock.sh $(ARGS)

migrate: ## Apply database migrations (alembic upgrade head)
	scripts/migrate.sh

.PHONY: bench
bench: ## Benchmark on PostgreSQL + Redis vs. a ceiling app (QUICK=1: ~2 minutes)
	scripts/bench.sh

clean: ## Remove .venv and caches (keeps the database, .env, uploads)
	scripts/clean.sh
