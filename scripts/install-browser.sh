#!/usr/bin/env bash
# Install the browser the docs browser test drives: Debian's Chromium and its ChromeDriver.
# Idempotent: does nothing when both are present. Needs root (or sudo) to install.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-browser: chromium/chromedriver are missing and this user cannot install them (run as root)" >&2
    exit 1
fi

echo "install-browser: installing chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
chromium --version >&2
chromedriver --version >&2
