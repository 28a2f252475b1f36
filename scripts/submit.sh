#!/usr/bin/env bash
# Run one command of the app on a Ray cluster as a Ray job, and follow its logs.
#
#   scripts/submit.sh train --config configs/my.yaml [--set KEY=VALUE ...]
#   scripts/submit.sh tune --config configs/tune.yaml --resume
#   scripts/submit.sh predict --checkpoint s3://bucket/runs/x/checkpoint_epoch_0012 --input s3://... --output s3://...
#
# RAY_ADDRESS      the cluster's job API (default http://127.0.0.1:8265: a local head, or the
#                  head of `ray up cluster.yaml` forwarded by `ray dashboard cluster.yaml`)
# APP_SUBMIT_PIP   1 (default): the job's runtime env pip-installs the project's dependencies at
#                  the versions in constraints.txt (already-installed matches are reused);
#                  0: rely on what the nodes have (cluster.yaml's setup_commands install it)
# APP_JOB_ID       job id (default app-<command>-<time>); `ray job logs/status/stop` take it
#
# The working directory is uploaded (without .venv, runs/, .git and data/synthetic/). Exits with
# the job's outcome: 0 when it SUCCEEDED. Needs `ray[default]` here, which the venv has.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
command=$1
shift

export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
# `ray start --head` turns on token authentication (Ray >= 2.5x); the client then sends the token.
if [ -z "${RAY_AUTH_MODE:-}" ] && [ -f "$HOME/.ray/auth_token" ]; then
    export RAY_AUTH_MODE=token
fi
RAY=${RAY:-ray}
if ! command -v "$RAY" >/dev/null; then
    RAY=.venv/bin/ray
fi
PYTHON=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
fi

job_id=${APP_JOB_ID:-app-$command-$(date +%Y%m%d-%H%M%S)}
runtime_env=$("$PYTHON" - "${APP_SUBMIT_PIP:-1}" <<'EOF'
import json, re, sys, tomllib

excludes = [".venv", "runs", ".git", "data/synthetic", "__pycache__", "*.egg-info"]
env = {"excludes": excludes}
if sys.argv[1] == "1":
    pins = {}
    for line in open("constraints.txt"):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    packages = []
    for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
        if name.lower() == "ray":
            continue  # the cluster's own Ray; a job never installs another
        key = name.lower().replace("_", "-")
        packages.append(f"{name}=={pins[key]}" if key in pins else dep)
    env["pip"] = {"packages": packages, "pip_check": False}
print(json.dumps(env))
EOF
)

echo "submitting $job_id to $RAY_ADDRESS: python -m app $command $*"
exec "$RAY" job submit --submission-id "$job_id" --working-dir . --runtime-env-json "$runtime_env" \
    -- python -m app "$command" "$@"
