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
# The `raytab` distribution with every extra (serve, export, tracking, report), the test
# tools and the benchmark tables: what the README's commands and the test suite need.
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[all,test,bench]'
# The distribution was called `app` before: its editable install would shadow this one.
if .venv/bin/python -m pip show --quiet app >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --quiet --yes app
fi
echo "$want" > "$stamp"
