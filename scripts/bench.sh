#!/usr/bin/env bash
# Benchmark the API on PostgreSQL + Redis against the ceiling app (bench/), with wrk.
# Installs wrk (Debian package) when missing, prepares the venv, then runs `python -m bench`.
#
# Environment (all optional):
#   QUICK=1               a short run (about two minutes): fewer, shorter repeats, smaller scale
#   BENCH_DATABASE_URL    default postgresql://postgres@127.0.0.1:5432/taskmanager_bench
#                         (created if missing; its schema is dropped and rebuilt every run)
#   BENCH_REDIS_URL       default redis://127.0.0.1:6379/14 (flushed every run)
#   BENCH_DURATION        seconds per wrk run (default 10, QUICK 2)
#   BENCH_REPEATS         repeats of the whole sequence (default 3, QUICK 2)
#   BENCH_WARMUP          seconds of warm-up per server (default 2, QUICK 1)
#   BENCH_SCALE           task counts of the scale curve (default 1000,10000,100000;
#                         QUICK 1000,10000)
#   BENCH_ONLY            comma-separated scenario names to run (ceilings always run)
#   BENCH_BASELINE        a git revision served beside today's API: each main scenario runs
#                         against both in every repeat and the report compares their ratios
#   BENCH_BASELINE_REDIS_URL  default redis://127.0.0.1:6379/13 (the baseline's; flushed)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_venv
ensure_locked requirements-dev.lock

if ! command -v wrk >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "wrk is not installed; install the Debian package as root: apt-get install wrk"
    fi
    step "Installing wrk with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed; cannot install wrk"
    apt-get install -y -qq wrk >/dev/null || die "apt-get install wrk failed"
fi

exec "$VENV_PY" -m bench
