#!/usr/bin/env bash
# Remove the virtualenv and tool caches. Keeps the database, .env and uploads.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step "Removing $VENV and caches (.pytest_cache .mypy_cache .ruff_cache __pycache__ *.pyc)"
rm -rf -- "$VENV" .pytest_cache .mypy_cache .ruff_cache
find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf -- {} + \
    -o -type f -name '*.py[co]' -exec rm -f -- {} +
step "Clean done (database file, .env and uploads/ kept)"
