#!/usr/bin/env bash
# Run one command of the app on a Ray cluster as a Ray job, and follow its logs.
#
#   scripts/submit.sh train --config configs/my.yaml [--set KEY=VALUE ...]
#   scripts/submit.sh tune --config configs/tune.yaml --resume
#   scripts/submit.sh predict --checkpoint s3://bucket/runs/x/checkpoint_epoch_0012 --input s3://... --output s3://...
#
# A thin wrapper over `python -m app submit COMMAND ARGS...` (app/submit.py), with the
# project's venv when it has one; `python -m app submit -h` tells the rest.
#
# RAY_ADDRESS      the cluster's job API (default http://127.0.0.1:8265: a local head, or the
#                  head of `ray up cluster.yaml` forwarded by `ray dashboard cluster.yaml`)
# APP_SUBMIT_PIP   1 (default): the job's runtime env pip-installs raytab's dependencies (and
#                  those of the extras installed here) at the versions installed here; the
#                  installed app package goes to the job as py_modules (already-installed matches are reused);
#                  0: rely on what the nodes have (cluster.yaml's setup_commands install it)
# APP_JOB_ID       job id (default app-<command>-<time>); `ray job logs/status/stop` take it
#
# The working directory is uploaded (without .venv, runs/, .git and data/synthetic/); each
# argument reaches the job as given (shell-quoted, never run by the head's shell). Exits with
# the job's outcome: 0 when it SUCCEEDED, 1 otherwise, 2 for bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
fi
exec "$PYTHON" -m app submit "$@"
