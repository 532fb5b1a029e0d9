#!/usr/bin/env bash
# Serve in production: venv + runtime deps, the settings checked once, the migrations applied
# once, then uvicorn with several worker processes. Configuration comes from the environment
# or .env (see .env.example); unlike `make run`, no .env is created: every worker and every
# instance must share one SECRET_KEY, so it is yours to provide. Extra arguments go to uvicorn.
#     HOST (default 0.0.0.0), PORT (default 8000), WORKERS (default: the number of CPUs)
# Shared by all workers: SECRET_KEY (a token from one worker is checked by another),
# DATABASE_URL, and REDIS_URL (rate-limit counters and the stats cache; without it each worker
# counts and caches on its own).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_venv
ensure_locked requirements.lock

host=${HOST:-0.0.0.0}
port=${PORT:-8000}
workers=${WORKERS:-$(nproc)}

# Fails here, once, with the reason (e.g. a missing SECRET_KEY), not in every worker.
step "Checking the settings"
settings=$("$VENV_PY" -c '
from config import get_settings
s = get_settings()
print(s.forwarded_allow_ips, "redis" if s.redis_url else "-", "file" if s.log_file else "-")
') || die "the settings are invalid (see above); .env.example documents each one"
read -r forwarded_allow_ips redis log_file <<<"$settings"
if ((workers > 1)) && [[ $redis == - ]]; then
    warn "REDIS_URL is not set: each of the $workers workers counts rate limits on its own"
fi
if ((workers > 1)) && [[ $log_file == file ]]; then
    warn "LOG_FILE with $workers workers: each rotates the file on its own; prefer stderr"
fi

# Once, before any worker starts: workers never race each other migrating the schema.
migrate

step "Serving main:app on $host:$port with $workers workers (Ctrl-C to stop)"
# --proxy-headers: the client address comes from X-Forwarded-For only when the peer is one of
# FORWARDED_ALLOW_IPS (the reverse proxy); our access line replaces uvicorn's; no server banner.
exec "$VENV_BIN/uvicorn" main:app \
    --host "$host" --port "$port" --workers "$workers" \
    --proxy-headers --forwarded-allow-ips "$forwarded_allow_ips" \
    --no-access-log --no-server-header \
    --timeout-graceful-shutdown 30 \
    "$@"
