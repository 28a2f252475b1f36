#!/usr/bin/env bash
# Fresh machine: set up, then train on the bundled penguins dataset on an embedded local Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m app train --config configs/quickstart.yaml "$@"
