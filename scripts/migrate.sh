#!/usr/bin/env bash
# Bring the database schema up to date (alembic upgrade head).
# Creates the venv / .env first when missing, like scripts/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_venv
ensure_locked requirements.lock
ensure_dotenv
migrate
