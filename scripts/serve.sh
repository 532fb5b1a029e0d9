#!/usr/bin/env bash
# Serve in production: venv + runtime deps, the settings checked once, the migrations applied
# once, then uvicorn with several worker processes. Configuration comes from the environment
# or .env (see .env.example); unlike `make run`, no .env is created: every worker and every
# instance must share one SECRET_KEY, so it is yours to provide. Extra arguments go to uvicorn.
#     HOST (default 0.0.0.0), PORT (default 8000), WORKERS (default: the number of CPUs)
#     DRY_RUN=1: check the settings, then print the uvicorn command line instead of serving
# Shared by all workers: SECRET_KEY (a token from one worker is checked by another),
# DATABASE_URL, and REDIS_URL (rate-limit counters, the stats cache and the job queue; without
# it each worker counts and caches on its own, and runs its own jobs).
# With METRICS_TOKEN set, GET /metrics merges the metrics of every worker process: they write
# them to PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory unless you give one; emptied at
# every start).
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
# Proxy-header trust (FORWARDED_ALLOW_IPS) and the connection limits (KEEP_ALIVE_SECONDS,
# MAX_CONNECTIONS_PER_WORKER), as `make run` applies them.
options=$("$VENV_PY" scripts/uvicorn_options.py) \
    || die "the settings are invalid (see above); .env.example documents each one"
mapfile -t options <<<"$options"
settings=$("$VENV_PY" -c '
from config import get_settings
s = get_settings()
print(
    "redis" if s.redis_url else "-",
    "file" if s.log_file else "-",
    "metrics" if s.metrics_token else "-",
)
')
read -r redis log_file metrics <<<"$settings"
if ((workers > 1)) && [[ $redis == - ]]; then
    warn "REDIS_URL is not set: each of the $workers workers counts rate limits on its own"
fi
if ((workers > 1)) && [[ $log_file == file ]]; then
    warn "LOG_FILE with $workers workers: each rotates the file on its own; prefer stderr"
fi

# Our access line replaces uvicorn's; no server banner. Keep-alive and concurrency are bounded
# here; header and body read timeouts and header size belong to the reverse proxy (README).
command=(
    "$VENV_BIN/uvicorn" main:app
    --host "$host" --port "$port" --workers "$workers"
    "${options[@]}"
    --no-access-log --no-server-header
    --timeout-graceful-shutdown 30
    "$@"
)
if [[ ${DRY_RUN:-} == 1 ]]; then
    printf '%q ' "${command[@]}"
    printf '\n'
    exit 0
fi

if [[ $metrics == metrics ]]; then
    # prometheus-client reads this when a worker imports it: each worker process writes its
    # counters to files there, and /metrics merges them. Files of an earlier run would add up
    # into wrong totals, so they go.
    metrics_dir=${PROMETHEUS_MULTIPROC_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/taskmanager-metrics.XXXXXX")}
    mkdir -p -- "$metrics_dir"
    find "$metrics_dir" -maxdepth 1 -type f -name '*.db' -delete
    export PROMETHEUS_MULTIPROC_DIR=$metrics_dir
    step "Metrics of the $workers workers merged through $metrics_dir"
fi

# Once, before any worker starts: workers never race each other migrating the schema.
migrate

step "Serving main:app on $host:$port with $workers workers (Ctrl-C to stop)"
exec "${command[@]}"
