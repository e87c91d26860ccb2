#!/usr/bin/env bash
# Create .venv with the project installed (editable, with dev tools) on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed as '$PYTHON' (set PYTHON=...)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "python venv support missing: installing Debian's python3-venv" >&2
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    else
        echo "error: Python's venv module is missing; install it: sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi
rm -rf .venv
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
