#!/usr/bin/env bash
# Start the app locally: venv + runtime deps (requirements.lock, hash-checked), .env with a
# random SECRET_KEY, database migrations, then uvicorn. Safe to re-run: reuses the venv, the
# .env and the database. Extra arguments are passed to uvicorn (e.g. --reload).
#     HOST (default 127.0.0.1), PORT (default 8000)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_venv
ensure_locked requirements.lock
ensure_dotenv
migrate

host=${HOST:-127.0.0.1}
port=${PORT:-8000}
step "Starting uvicorn main:app on http://$host:$port (Ctrl-C to stop)"
exec "$VENV_BIN/uvicorn" main:app --host "$host" --port "$port" "$@"
