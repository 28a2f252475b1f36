"""`submit`: run one command of this app on a Ray cluster as a Ray job, and follow its logs.

    python -m app submit train --config configs/my.yaml --set scaling.num_workers=8
    python -m app submit --address http://127.0.0.1:8265 tune --config configs/tune.yaml --resume
    scripts/submit.sh predict --checkpoint s3://bucket/runs/x/checkpoint_epoch_0012 --input s3://... --output s3://...

The job runs `python -m app COMMAND ARGS...` in a copy of this project's folder (uploaded
without .venv, runs/, .git and data/synthetic/). Its entrypoint is one shell-quoted command
line (`shlex.join`): every argument reaches the job exactly as given, and no `;`, `$(...)`
or quote in one makes the head's shell run anything. The exit status is the job's outcome:
0 when it SUCCEEDED, 1 otherwise (2: bad usage, or the job API refused the job).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from app.errors import UserError
from app.redact import redact

ROOT = Path(__file__).resolve().parents[1]  # the project folder: uploaded as the job's working dir
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # a local head, or one forwarded by `ray dashboard cluster.yaml`
EXCLUDES = [".venv", "runs", ".git", "data/synthetic", "__pycache__", "*.egg-info"]
ENV_HELP = """environment:
  RAY_ADDRESS     the cluster's job API when --address is not given (default http://127.0.0.1:8265)
  APP_SUBMIT_PIP  1 (default): the job's runtime env pip-installs the project's dependencies at
                  the versions in constraints.txt (matches already installed are reused);
                  0: rely on what the nodes have (cluster.yaml's setup_commands install it)
  APP_JOB_ID      job id (default app-<command>-<time>); `ray job logs/status/stop` take it
  RAY_AUTH_MODE   set to `token` when unset and ~/.ray/auth_token exists (`ray start --head`
                  turns on token authentication)"""


def entrypoint(command: str, args: list[str]) -> str:
    """The job's command line, each argument quoted for the shell that Ray runs it with."""
    return shlex.join(["python", "-m", "app", command, *args])


def runtime_env(pip: bool, root: Path = ROOT) -> dict[str, Any]:
    """The job's runtime env: this folder as working dir and, with `pip`, the project's
    dependencies pinned to constraints.txt (Ray itself excepted: the cluster's own runs it)."""
    env: dict[str, Any] = {"working_dir": str(root), "excludes": list(EXCLUDES)}
    if not pip:
        return env
    import tomllib

    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[_normal(m.group(1))] = m.group(2)
    packages = []
    for dep in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
        if _normal(name) == "ray":
            continue  # a job never installs another Ray
        packages.append(f"{name}=={pins[_normal(name)]}" if _normal(name) in pins else dep)
    env["pip"] = {"packages": packages, "pip_check": False}
    return env


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def pip_wanted() -> bool:
    value = os.environ.get("APP_SUBMIT_PIP", "1")
    if value not in ("0", "1"):
        raise UserError(f"APP_SUBMIT_PIP={value!r}: expected 1 (install the dependencies in the job) or 0")
    return value == "1"


def job_id(command: str) -> str:
    return os.environ.get("APP_JOB_ID") or f"app-{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def submit(command: str, args: list[str], *, address: str | None = None) -> int:
    """Submit `python -m app COMMAND ARGS...`, print its logs as they come, and return 0
    when the job SUCCEEDED, 1 otherwise."""
    source = "--address" if address else "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "the default address"
    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    env, submission_id, line = runtime_env(pip_wanted()), job_id(command), entrypoint(command, args)
    if not os.environ.get("RAY_AUTH_MODE") and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"  # read when the client is made
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"{source} {redact(address)}: no Ray job API answers there "
                        f"({redact(' '.join(str(e).split()))[:300]})") from None
    print(f"submitting {submission_id} to {redact(address)}: {redact(line)}", flush=True)
    try:
        client.submit_job(entrypoint=line, submission_id=submission_id, runtime_env=env)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"job {submission_id}: refused by {redact(address)} "
                        f"({redact(' '.join(str(e).split()))[:500]})") from None
    try:
        return follow(client, submission_id)
    except KeyboardInterrupt:
        print(f"stopped following; the job goes on (`ray job stop {submission_id}` stops it)", file=sys.stderr)
        raise


def follow(client, submission_id: str) -> int:
    """Print the job's output until it ends; its outcome as an exit status."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        pending = ""  # whole lines only: a URI cut between two chunks is still redacted as one
        async for chunk in client.tail_job_logs(submission_id):
            pending += chunk
            lines, _, pending = pending.rpartition("\n")
            if lines:
                sys.stdout.write(lines + "\n")
                sys.stdout.flush()
        if pending:
            sys.stdout.write(pending)

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # the log stream broke off: the outcome still counts
        print(f"warning: job {submission_id}: log stream ended ({' '.join(str(e).split())[:300]}); waiting for "
              f"the job to end", file=sys.stderr, flush=True)
    while not (status := client.get_job_status(submission_id)).is_terminal():
        time.sleep(1)  # polled: the stream closes a moment before the status turns final
    if status == JobStatus.SUCCEEDED:
        print(f"Job '{submission_id}' succeeded")
        return 0
    message = client.get_job_info(submission_id).message
    print(f"Job '{submission_id}' {str(status.value).lower()}" + (f": {message}" if message else ""),
          file=sys.stderr)
    return 1
