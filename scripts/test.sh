#!/usr/bin/env bash
# Fresh machine: set up, then run the tests. Extra arguments go to pytest.
#
#   scripts/test.sh            the whole suite (CI runs this): about 16 minutes on 2 cores
#   scripts/test.sh --quick    everything not marked `slow` (no subprocess clusters, no long
#                              sweeps or fault drills): about 3 minutes, for everyday work
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=()
for arg in "$@"; do
    if [ "$arg" = "--quick" ]; then
        args+=(-m "not slow")
    else
        args+=("$arg")
    fi
done
exec .venv/bin/python -m pytest ${args[@]+"${args[@]}"}  # (bash < 4.4: an empty array is unset)
