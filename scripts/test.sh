#!/usr/bin/env bash
# Lint, then run the test suite on both backends:
#   pass 1 "embedded"          SQLite temp file, no Redis (TEST_* variables unset)
#   pass 2 "postgresql+redis"  TEST_DATABASE_URL / TEST_REDIS_URL exported
# Arguments are passed to pytest in both passes (e.g. -k login, -x).
# Both passes run under coverage ([tool.coverage] in pyproject.toml); their data is combined
# into .coverage, reported, and held to the floor (fail_under) when the whole suite ran on
# both backends (no arguments). `.venv/bin/coverage html` then shows the lines missed.
#
# Environment:
#   TEST_DATABASE_URL  default postgresql://postgres@127.0.0.1:5432/test
#   TEST_REDIS_URL     default redis://127.0.0.1:6379/15
#   CI=true            an unreachable PostgreSQL/Redis fails the run instead of
#                      running the embedded pass only
#   SKIP_LINT=1        skip ruff/mypy (quick local iterations only)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}
TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-sh.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

# pytest options of our own. --verbosity=-1 is "-q" that also overrides any
# -q/-qq in the project's addopts (-qq would hide the final summary line).
pytest_opts=(--verbosity=-1 -ra)

# The last "N passed ... in X.XXs" style line of a pytest log, without the
# ===== padding and colour codes; empty when pytest never got that far.
pytest_summary_line() {
    sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' -- "$1" \
        | grep -E '(^|[ =])([0-9]+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|rerun)|no tests ran)\b.* in [0-9]+(\.[0-9]+)?s' \
        | tail -n 1 \
        | sed -E 's/^[ =]+//; s/[ =]+$//' || true
}

# run_pass NAME LOG [env args...] -- runs pytest, sets pass_rc and pass_line.
run_pass() {
    local name=$1 log=$2
    shift 2
    step "Tests, pass \"$name\""
    pass_rc=0
    env "$@" "$VENV_PY" -m coverage run -m pytest "${pytest_opts[@]}" "${pytest_args[@]}" 2>&1 \
        | tee -- "$log" || pass_rc=$?
    pass_line=$(pytest_summary_line "$log")
    if [[ -z $pass_line ]]; then
        pass_line="pytest exited with code $pass_rc before printing a summary line"
    elif ((pass_rc != 0)); then
        pass_line="$pass_line (exit code $pass_rc)"
    fi
}

# report_coverage SCOPE ENFORCE -- combines the passes' data, prints the report, sets
# coverage_line and coverage_rc (1 when ENFORCE=1 and the total is below the floor).
report_coverage() {
    local scope=$1 enforce=$2 floor total
    coverage_rc=0
    step "Coverage ($scope)"
    if ! "$VENV_PY" -m coverage combine --quiet 2>"$tmp/coverage.err"; then
        cat -- "$tmp/coverage.err" >&2
        coverage_line="not measured (no coverage data)"
        coverage_rc=$enforce
        return 0
    fi
    floor=$("$VENV_PY" -c 'import coverage; print(f"{coverage.Coverage().config.fail_under:g}")')
    "$VENV_PY" -m coverage report --fail-under=0 || true
    total=$("$VENV_PY" -m coverage report --format=total --fail-under=0)
    if ((!enforce)); then
        coverage_line="$total% ($scope; the $floor% floor holds for the whole suite only)"
    elif "$VENV_PY" -m coverage report --format=total >/dev/null; then
        coverage_line="$total% ($scope; floor $floor%)"
    else
        coverage_line="$total% ($scope) is BELOW the floor of $floor% (fail_under in pyproject.toml)"
        coverage_rc=1
    fi
}

print_summary() {
    printf '\n========== test summary ==========\n'
    printf '%-18s %s\n' "coverage:" "$coverage_line"
    printf '%-18s %s\n' "embedded:" "$embedded_line" "postgresql+redis:" "$backend_line"
    printf '==================================\n'
}

pytest_args=("$@")

# 1. virtualenv + dev requirements (requirements-dev.lock, hash-checked)
ensure_venv
ensure_locked requirements-dev.lock

# The docs browser test drives Debian's Chromium: install it when missing.
step "Browser for the docs test (chromium, chromium-driver)"
if ! scripts/install-browser.sh; then
    [[ ${CI:-} == true ]] && die "CI=true and the browser for the docs test cannot be installed"
    warn "chromium could not be installed; the docs browser test will skip"
fi

# 2. lint
if [[ ${SKIP_LINT:-} == 1 ]]; then
    step "Lint skipped (SKIP_LINT=1)"
else
    lint
fi

# Coverage data of this run only (absolute: the processes the tests start write there too).
export COVERAGE_FILE=$PWD/.coverage
"$VENV_PY" -m coverage erase
whole_suite=$((${#pytest_args[@]} == 0))
coverage_line="not measured"

# 3. pass 1: embedded (SQLite, no Redis)
run_pass embedded "$tmp/embedded.log" -u TEST_DATABASE_URL -u TEST_REDIS_URL
embedded_rc=$pass_rc
embedded_line=$pass_line

# 4. probe PostgreSQL + Redis
step "Probing PostgreSQL and Redis for the postgresql+redis pass"
export TEST_DATABASE_URL TEST_REDIS_URL
probe_rc=0
"$VENV_PY" scripts/check_services.py >"$tmp/probe.txt" 2>&1 || probe_rc=$?
if ((probe_rc != 0)); then
    # 5. a service is unreachable
    unreachable=$(grep 'UNREACHABLE' "$tmp/probe.txt" | paste -sd ';' - | sed 's/;/; /g' || true)
    if [[ -z $unreachable ]]; then  # the probe itself crashed: show why
        cat -- "$tmp/probe.txt" >&2
        unreachable="scripts/check_services.py failed with exit code $probe_rc"
    fi
    if [[ ${CI:-} == true ]]; then
        printf 'ERROR: CI=true and the postgresql+redis pass cannot run: %s\n' "$unreachable" >&2
        backend_line="NOT RUN - $unreachable"
        print_summary
        exit 1
    fi
    warn "postgresql+redis pass skipped, only the embedded pass ran: $unreachable"
    backend_line="skipped (service unreachable; CI=true would make this a failure)"
    report_coverage "embedded pass only" 0
    print_summary
    exit "$embedded_rc"
fi
sed 's/^/    /' "$tmp/probe.txt"

# 6. pass 2: PostgreSQL + Redis
run_pass postgresql+redis "$tmp/backend.log"
backend_rc=$pass_rc
backend_line=$pass_line

# 7. coverage of both passes, then the summary
report_coverage "both passes combined" "$whole_suite"
print_summary
if ((embedded_rc != 0 || backend_rc != 0 || coverage_rc != 0)); then
    exit 1
fi
