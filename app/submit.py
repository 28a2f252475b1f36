"""`submit`: run one command of this app on a Ray cluster as a Ray job, and follow its logs.

    raytab submit train --config configs/my.yaml --set scaling.num_workers=8
    raytab submit --address http://127.0.0.1:8265 tune --config configs/tune.yaml --resume
    scripts/submit.sh predict --checkpoint s3://bucket/runs/x/checkpoint_epoch_0012 --input s3://... --output s3://...

The job runs `python -m app COMMAND ARGS...` with exactly the app that runs here, whether
installed from a wheel or from a checkout (`pip install -e`): its runtime env ships

- the installed `app` package folder as a `py_modules` entry (first on the job's import path);
- the current directory as its `working_dir` (without .venv, runs/, .git, data/synthetic/
  and an app/ folder there, which py_modules ships), so that a config, data or any other
  path relative to the current directory means the same in the job;
- with APP_SUBMIT_PIP=1 (the default), the `raytab` distribution's own dependencies pinned
  to the versions installed here (read from the installed package's metadata: no file of a
  checkout is read), and those of each extra (`serve`, `export`, `tracking`, `report`) that
  is installed here. Ray itself is never installed: the cluster's own runs the job.

Its entrypoint is one shell-quoted command line (`shlex.join`): every argument reaches the
job exactly as given, and no `;`, `$(...)` or quote in one makes the head's shell run
anything. The exit status is the job's outcome: 0 when it SUCCEEDED, 1 otherwise (2: bad
usage, or the job API refused the job).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from app.errors import UserError
from app.extras import EXTRAS
from app.redact import redact
from app.version import DISTRIBUTION

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent  # the installed `app` package: the job's py_modules entry
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # a local head, or one forwarded by `ray dashboard cluster.yaml`
EXCLUDES = [".venv", "runs", ".git", "data/synthetic", "__pycache__", "*.egg-info", "/app"]
ENV_HELP = """environment:
  RAY_ADDRESS     the cluster's job API when --address is not given (default http://127.0.0.1:8265)
  APP_SUBMIT_PIP  1 (default): the job's runtime env pip-installs raytab's dependencies (and
                  those of the extras installed here) at the versions installed here (matches
                  already on the nodes are reused); 0: rely on what the nodes have
                  (cluster.yaml's setup_commands install it)
  APP_JOB_ID      job id (default app-<command>-<time>); `ray job logs/status/stop` take it
  RAY_AUTH_MODE   set to `token` when unset and ~/.ray/auth_token exists (`ray start --head`
                  turns on token authentication)
the job gets this installed app package (py_modules) and the current directory as its
working dir (without .venv, runs/, .git, data/synthetic/, app/): paths relative to it work"""


def entrypoint(command: str, args: list[str]) -> str:
    """The job's command line, each argument quoted for the shell that Ray runs it with."""
    return shlex.join(["python", "-m", "app", command, *args])


def runtime_env(pip: bool, working_dir: Path | None = None) -> dict[str, Any]:
    """The job's runtime env: `working_dir` (default: the current directory) uploaded as its
    working dir, this installed `app` package as a py_modules entry and, with `pip`, the
    packages of `pinned_requirements`."""
    env: dict[str, Any] = {"working_dir": str(working_dir or Path.cwd()), "py_modules": [str(PACKAGE)],
                           "excludes": list(EXCLUDES)}
    if pip:
        env["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    return env


def pinned_requirements() -> list[str]:
    """The installed `raytab` distribution's requirements, and those of the extras in
    EXTRAS whose requirements are all installed here, each pinned to the version installed
    here (as given where it is not installed). Ray is left out: a job never installs another."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    try:
        declared = [Requirement(r) for r in requires(DISTRIBUTION) or []]
    except PackageNotFoundError:
        raise UserError(f"submit: the {DISTRIBUTION} distribution is not installed, so its dependencies are "
                        f"unknown: pip install {DISTRIBUTION} (or `pip install -e .` in a checkout), "
                        f"or set APP_SUBMIT_PIP=0") from None

    def installed(req: Requirement) -> str | None:
        """The installed version without its local label: `torch==2.13.0` is met by a node's
        2.13.0 CUDA build and by this machine's 2.13.0+cpu alike, which only one index has."""
        try:
            return version(req.name).split("+", 1)[0]
        except PackageNotFoundError:
            return None

    def applies(req: Requirement, extra: str) -> bool:
        return req.marker is None or req.marker.evaluate({"extra": extra})

    chosen = [r for r in declared if applies(r, "")]
    for extra in EXTRAS:
        wanted = [r for r in declared if r.marker is not None and applies(r, extra) and not applies(r, "")]
        if wanted and all(installed(r) for r in wanted):
            chosen += wanted
    packages: dict[str, str] = {}
    for req in chosen:
        name = _normal(req.name)
        if name in ("ray", _normal(DISTRIBUTION)) or name in packages:
            continue  # the cluster's own Ray runs the job; `all` names raytab itself
        pinned = installed(req)
        packages[name] = f"{req.name}=={pinned}" if pinned else str(Requirement(f"{req.name}{req.specifier}"))
    return list(packages.values())


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


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
    log.info(f"submitting {submission_id} to {redact(address)}: {redact(line)}")
    try:
        client.submit_job(entrypoint=line, submission_id=submission_id, runtime_env=env)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"job {submission_id}: refused by {redact(address)} "
                        f"({redact(' '.join(str(e).split()))[:500]})") from None
    try:
        return follow(client, submission_id)
    except KeyboardInterrupt:
        log.warning(f"stopped following; the job goes on (`ray job stop {submission_id}` stops it)")
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
        log.warning(f"job {submission_id}: log stream ended ({' '.join(str(e).split())[:300]}); waiting for "
                    f"the job to end")
    while not (status := client.get_job_status(submission_id)).is_terminal():
        time.sleep(1)  # polled: the stream closes a moment before the status turns final
    if status == JobStatus.SUCCEEDED:
        log.info(f"Job '{submission_id}' succeeded")
        return 0
    message = client.get_job_info(submission_id).message
    log.warning(f"Job '{submission_id}' {str(status.value).lower()}" + (f": {message}" if message else ""))
    return 1
