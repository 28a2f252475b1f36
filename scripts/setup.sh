#!/usr/bin/env bash
# Create (or reuse) .venv and install the app with the tested, pinned versions.
# Idempotent: re-running with unchanged pyproject.toml and constraints.txt does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.app-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

.venv/bin/python -m pip install --quiet --upgrade pip
# constraints.txt pins the versions the test suite ran with (torch is the CPU build).
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
echo "$want" > "$stamp"
