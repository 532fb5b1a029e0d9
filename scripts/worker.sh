#!/usr/bin/env bash
# Run one job worker for the production setup (REDIS_URL set): it takes the jobs that API
# processes record after their commits (completion notices, removing deleted files' bytes) from
# the deployment's RQ queue, and sweeps the outbox for anything a crash or a Redis flush lost.
# Start as many as you like, on any machine that reaches the database, Redis and the mail
# server. Configuration as for `make serve` (environment or .env); the API applies migrations.
# Extra arguments go to `python -m worker` (e.g. --burst: run what is queued, then exit).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_venv
ensure_requirements requirements.txt

step "Starting a job worker (Ctrl-C to stop after the job in hand)"
exec "$VENV_PY" -m worker "$@"
