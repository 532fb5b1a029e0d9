# shellcheck shell=bash
# Shared helpers for the developer-workflow scripts in scripts/.
# Source it from a script after `cd`-ing to the project root:
#     cd "$(dirname "$0")/.." && . scripts/lib.sh
#
# Environment knobs (all optional):
#     PYTHON  interpreter used to create the venv (default: python3)
#     VENV    venv directory, relative to the project root (default: .venv)

VENV=${VENV:-.venv}
VENV_PY=$VENV/bin/python
VENV_BIN=$VENV/bin

# One short line per step.
step() { printf '==> %s\n' "$*"; }
warn() { printf '!!  %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# True when the venv exists and its interpreter runs and has pip.
venv_usable() {
    [[ -x $VENV_PY ]] && "$VENV_PY" -c 'import pip' >/dev/null 2>&1
}

# Install Debian's venv support (python3-venv) when running as root.
install_python_venv_package() {
    local py=$1 versioned
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "'$py -m venv' failed: the venv module is missing. On Debian/Ubuntu run: sudo apt-get install python3-venv"
    fi
    step "Installing python3-venv with apt-get (Debian ships the venv module separately)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # python3-venv pulls in python3.X-venv for Debian's default python3; name the
    # versioned package too when it exists, in case python3 is not the default.
    versioned=$("$py" -c 'import sys; print(f"python3.{sys.version_info[1]}-venv")')
    if apt-cache show "$versioned" >/dev/null 2>&1; then
        apt-get install -y -qq python3-venv "$versioned" >/dev/null
    else
        apt-get install -y -qq python3-venv >/dev/null
    fi
}

# Create $VENV with `python3 -m venv` unless a working one is already there.
ensure_venv() {
    local py=${PYTHON:-python3}
    if venv_usable; then
        step "Using existing virtualenv $VENV"
        return 0
    fi
    command -v "$py" >/dev/null 2>&1 || die "$py not found; install Python 3.11+ first"
    if [[ -e $VENV ]]; then
        warn "$VENV exists but is broken (no working python/pip); recreating it"
        rm -rf -- "$VENV"
    fi
    step "Creating virtualenv $VENV with $py -m venv"
    if ! "$py" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf -- "$VENV"
        warn "'$py -m venv' failed: Python's venv/ensurepip support is not installed (Debian: package python3-venv)"
        install_python_venv_package "$py"
        "$py" -m venv "$VENV" || { rm -rf -- "$VENV"; die "'$py -m venv' still fails"; }
    fi
    venv_usable || die "the new virtualenv $VENV has no working pip"
}

# Print a requirements file and, recursively, the files it pulls in with
# -r/--requirement or -c/--constraint (paths relative to the including file).
requirements_closure() {
    local file=$1 depth=${2:-0} dir line ref
    [[ -f $file ]] || die "requirements file not found: $file"
    ((depth < 10)) || die "requirements nesting too deep at $file (include loop?)"
    printf '%s\n' "$file"
    dir=$(dirname -- "$file")
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^[[:space:]]*(-r|--requirement|-c|--constraint)[[:space:]=]+([^[:space:]]+) ]]; then
            ref=${BASH_REMATCH[2]}
            [[ $ref == /* ]] || ref=$dir/$ref
            requirements_closure "$ref" $((depth + 1))
        fi
    done <"$file"
}

# Hash of the venv's Python version plus every file in the requirements closure.
requirements_hash() {
    local f
    {
        "$VENV_PY" -c 'import sys; print(sys.version)'
        while IFS= read -r f; do
            printf '### %s\n' "$f"
            cat -- "$f"
        done < <(requirements_closure "$1")
    } | sha256sum | cut -d' ' -f1
}

# pip-install a requirements file into $VENV, skipped when neither it nor the
# files it includes changed since the last successful install. The stamp lives
# inside the venv, so deleting the venv (make clean) also forgets it.
# Extra arguments go to pip (e.g. --require-hashes).
ensure_requirements() {
    local req=$1 stamp hash
    shift
    stamp=$VENV/.stamp-$(basename -- "$req").sha256
    hash=$(requirements_hash "$req")
    if [[ -f $stamp && $(<"$stamp") == "$hash" ]]; then
        step "$req unchanged since last install; skipping pip"
        return 0
    fi
    step "Installing $req into $VENV (pip${*:+ $*})"
    "$VENV_PY" -m pip install --disable-pip-version-check --no-input -q "$@" -r "$req" \
        || die "pip install -r $req failed"
    "$VENV_PY" -m pip check >/dev/null || die "pip check failed after installing $req"
    printf '%s\n' "$hash" >"$stamp"
}

# --- lock files ----------------------------------------------------------------------------
# requirements.lock and requirements-dev.lock pin every package, transitive ones included,
# with the hashes of its published files. scripts/lock.sh (make lock) writes them from
# requirements.txt and requirements-dev.txt and records LOCK_INPUTS_TAG: the sha256 of the
# requirement lines they were made from (comments and blank lines do not count).
LOCK_INPUTS=requirements-dev.txt  # it includes requirements.txt
LOCK_INPUTS_TAG='# requirements sha256: '

lock_inputs_hash() {
    local f
    while IFS= read -r f; do
        printf '### %s\n' "$f"
        sed -E 's/(^|[[:space:]])#.*$//; s/[[:space:]]+$//; /^$/d' -- "$f"
    done < <(requirements_closure "$LOCK_INPUTS") | sha256sum | cut -d' ' -f1
}

# Install a lock file with --require-hashes: pip refuses any file whose hash differs and any
# package the lock does not pin. Stops first when the lock is older than the requirements.
# --no-deps: the lock already lists every package, so pip has nothing to resolve (its resolver
# would otherwise weigh a dependency's extras, e.g. `uvicorn[standard]>=0.30`, against the
# newest release on the index and refuse it as unpinned); `pip check` then proves the set whole.
ensure_locked() {
    local lock=$1 recorded
    [[ -f $lock ]] || die "$lock is missing: run make lock"
    recorded=$(sed -n "s/^$LOCK_INPUTS_TAG//p" -- "$lock")
    if [[ $recorded != "$(lock_inputs_hash)" ]]; then
        die "$lock was not made from requirements*.txt as they are now: run make lock"
    fi
    ensure_requirements "$lock" --require-hashes --no-deps
}

# Create .env with a fresh random SECRET_KEY if there is none. Never overwrites.
ensure_dotenv() {
    local key
    if [[ -e .env ]]; then
        step "Using existing .env"
        return 0
    fi
    key=$("$VENV_PY" -c 'import secrets; print(secrets.token_urlsafe(48))')
    step "Creating .env with a fresh random SECRET_KEY"
    (
        umask 077
        set -o noclobber  # never clobber a .env that appeared meanwhile
        cat >.env <<ENV
# Generated by scripts/$(basename -- "$0") on $(date -u '+%Y-%m-%d %H:%M UTC'): a random SECRET_KEY
# for this checkout only. Keep it private; never commit it.
# .env.example documents every setting you can add here.
SECRET_KEY=$key
ENV
    ) || die "could not create .env"
}

# alembic upgrade head (alembic.ini in the project root).
migrate() {
    step "Applying database migrations (alembic upgrade head)"
    "$VENV_BIN/alembic" upgrade head || die "alembic upgrade head failed"
}

# ruff check, ruff format --check, mypy; stops at the first failure (set -e).
lint() {
    step "Lint: ruff check ."
    "$VENV_BIN/ruff" check . || die "ruff check failed"
    step "Lint: ruff format --check ."
    "$VENV_BIN/ruff" format --check . || die "ruff format --check failed (run: $VENV_BIN/ruff format .)"
    step "Lint: mypy ."
    "$VENV_BIN/mypy" . || die "mypy failed"
}
