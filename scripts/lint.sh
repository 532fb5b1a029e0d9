#!/usr/bin/env bash
# Lint only: ruff check, ruff format --check, mypy (requirements-dev.lock in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_venv
ensure_locked requirements-dev.lock
lint
step "Lint passed"
