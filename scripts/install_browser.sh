#!/usr/bin/env bash
# Debian's chromium for the real-browser notebook check (tests/browser). Playwright's Python
# package comes with the dev extra (pip); it drives this system chromium, so no browser is
# ever downloaded by Playwright. Without root or apt, the browser test skips with a reason.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get; install chromium yourself to run the browser check" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_browser: not root and no sudo; install chromium yourself to run the browser check" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium >/dev/null
}
chromium --version 2>/dev/null || true
