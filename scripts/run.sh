#!/usr/bin/env bash
# Start the app locally: venv + runtime deps (requirements.lock, hash-checked), .env with a
# random SECRET_KEY, database migrations, then uvicorn. Safe to re-run: reuses the venv, the
# .env and the database. Extra arguments are passed to uvicorn (e.g. --reload).
#     HOST (default 127.0.0.1), PORT (default 8000)
#     DRY_RUN=1: instead of migrating and serving, print the uvicorn command line
# uvicorn's proxy-header trust and connection limits come from the settings
# (FORWARDED_ALLOW_IPS, KEEP_ALIVE_SECONDS, MAX_CONNECTIONS_PER_WORKER), as in serve.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_venv
ensure_locked requirements.lock
ensure_dotenv

options=$("$VENV_PY" scripts/uvicorn_options.py) \
    || die "the settings are invalid (see above); .env.example documents each one"
mapfile -t options <<<"$options"

host=${HOST:-127.0.0.1}
port=${PORT:-8000}
command=("$VENV_BIN/uvicorn" main:app --host "$host" --port "$port" "${options[@]}" "$@")
if [[ ${DRY_RUN:-} == 1 ]]; then
    printf '%q ' "${command[@]}"
    printf '\n'
    exit 0
fi

migrate
step "Starting uvicorn main:app on http://$host:$port (Ctrl-C to stop)"
exec "${command[@]}"
