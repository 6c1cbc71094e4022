#!/usr/bin/env bash
# Installs what the demo page's tests need, if it is missing: Debian's chromium and chromium-driver
# (headless Chromium driven by Selenium) and nodejs (the web IM module's unit test). Idempotent; needs root (or sudo) and the
# Debian package mirrors. Selenium itself comes from requirements-dev.txt.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver && have node; then
    echo "install-browser: chromium, chromedriver and node are already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then SUDO="sudo -n"; else
        echo "install-browser: need root (or sudo) to apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when chromium cannot be found in them.
if ! apt-cache show chromium >/dev/null 2>&1 || ! apt-cache show chromium-driver >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
if ! $SUDO apt-get install -y -q chromium chromium-driver nodejs; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q chromium chromium-driver nodejs
fi

have chromium && have chromedriver && have node || { echo "install-browser: chromium/chromedriver/node still missing" >&2; exit 1; }
echo "install-browser: $(chromium --version 2>/dev/null || true); $(chromedriver --version 2>/dev/null | head -1 || true)"
