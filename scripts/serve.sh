#!/usr/bin/env bash
# Serve in production: validate the settings, apply the migrations once, then start uvicorn
# with several worker processes. Configuration comes from the environment or .env (see
# .env.example); extra arguments are passed to uvicorn.
#     HOST (default 0.0.0.0), PORT (default 8000), WORKERS (default: the number of CPUs)
# Every worker must see the same settings: the same SECRET_KEY (tokens from one worker are
# checked by another), DATABASE_URL and REDIS_URL (rate-limit counters and the stats cache
# are shared through Redis; without it each worker keeps its own).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_BIN=${VENV:-.venv}/bin
[[ -x $VENV_BIN/uvicorn ]] || {
    echo "ERROR: $VENV_BIN/uvicorn not found; install requirements.txt into ${VENV:-.venv} first" >&2
    exit 1
}

host=${HOST:-0.0.0.0}
port=${PORT:-8000}
workers=${WORKERS:-$(nproc)}

# Fails here, once, with the reason (e.g. a missing SECRET_KEY), not in every worker.
readarray -t setting < <("$VENV_BIN/python" -c '
from config import get_settings
s = get_settings()
print(s.forwarded_allow_ips)
print("redis" if s.redis_url else "")
print(s.log_file or "")
')
forwarded_allow_ips=${setting[0]}
if ((workers > 1)) && [[ -z ${setting[1]} ]]; then
    echo "!!  REDIS_URL is not set: each of the $workers workers counts rate limits on its own" >&2
fi
if ((workers > 1)) && [[ -n ${setting[2]} ]]; then
    echo "!!  LOG_FILE with $workers workers: rotation is per process; prefer stderr" >&2
fi

# Once, before any worker starts: workers never race each other migrating the schema.
echo "==> Applying database migrations (alembic upgrade head)"
"$VENV_BIN/alembic" upgrade head

echo "==> Serving main:app on $host:$port with $workers workers"
# --proxy-headers: the client address comes from X-Forwarded-For only when the peer is one of
# FORWARDED_ALLOW_IPS (the reverse proxy); our access line replaces uvicorn's; no server banner.
exec "$VENV_BIN/uvicorn" main:app \
    --host "$host" --port "$port" --workers "$workers" \
    --proxy-headers --forwarded-allow-ips "$forwarded_allow_ips" \
    --no-access-log --no-server-header \
    --timeout-graceful-shutdown 30 \
    "$@"
