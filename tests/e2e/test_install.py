"""The `raytab` wheel, installed without extras into a fresh venv, used from a folder outside
the checkout (which is not on the import path): `raytab --version`, `train`, `predict`,
`serve` refused without its extra, and `submit` of a job to a `ray start --head` cluster whose
Python is that venv. So the core works without the extras, and nothing reads the checkout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from tests.conftest import NO_TRACKING, PENGUINS, REPO, _free_port
from tests.e2e.test_job_submit import stop_ray_of

pytestmark = pytest.mark.slow


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 600)
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's bin folder, the wheel's version, a work folder holding penguins.csv,
    the environment to run its commands in). The wheel is built from a copy of what it
    packages, so that the build leaves nothing in the checkout."""
    started = time.time()
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                  "-w", str(root / "wheels"), str(source)])
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (root / "wheels").glob("raytab-*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr[-3000:]
    # The core only, at the tested versions: no extra is installed.
    done = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",  # (bytecode: as imported)
                 "-c", str(REPO / "constraints.txt"), str(wheel)])
    assert done.returncode == 0, done.stderr[-3000:]
    work = root / "work"  # outside the checkout: the current directory of every command
    work.mkdir()
    shutil.copy(PENGUINS, work / "penguins.csv")
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "APP_")) and k != "PYTHONPATH"}
    # The venv's commands first; an embedded Ray of its own (a `ray start` of another test is not joined).
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", RAY_TMPDIR=ray_tmp, VIRTUAL_ENV=str(venv))
    print(f"\nwheel built and installed into a fresh venv in {time.time() - started:.0f}s")
    yield venv / "bin", wheel.name.split("-")[1], work, env
    stop_ray_of(str(venv))  # an embedded Ray that outlived its command, if any
    shutil.rmtree(ray_tmp, ignore_errors=True)


def raytab(installed, *args, **kwargs) -> subprocess.CompletedProcess:
    bin_dir, _, work, env = installed
    return _run([str(bin_dir / "raytab"), *args], cwd=work, env=kwargs.pop("env", env), **kwargs)


def test_the_installed_package_is_the_wheel_and_no_extra_is_there(installed):
    bin_dir, version, work, env = installed
    probe = ("import app, importlib.util as u; print(app.__file__); "
             "print([m for m in ('mlflow', 'tensorboard', 'matplotlib', 'onnx', 'fastapi') if u.find_spec(m)])")
    where = _run([str(bin_dir / "python"), "-c", probe], cwd=work, env=env)
    assert where.returncode == 0, where.stderr[-3000:]
    package, extras = where.stdout.split()
    assert str(bin_dir.parent) in package and str(REPO) not in package
    assert extras == "[]"
    shown = raytab(installed, "--version")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert version in shown.stdout


@pytest.fixture(scope="module")
def trained(installed):
    """`raytab train` on penguins.csv, named relative to the work folder: its run folder."""
    _, _, work, _ = installed
    tree = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    tree["data"]["train"] = "penguins.csv"  # relative: the current directory's (also in a job's working dir)
    tree["run"]["storage"] = str(work / "runs")  # absolute: a job's working dir is a temporary copy
    tree["train"]["epochs"] = 1
    tree["scaling"]["num_workers"] = 1
    tree["tracking"] = dict(NO_TRACKING)  # the tracking extra is not installed
    (work / "config.yaml").write_text(yaml.safe_dump(tree))
    done = raytab(installed, "train", "--config", "config.yaml")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return work / "runs" / tree["name"]


def test_train_and_predict_from_the_installed_package(installed, trained):
    _, _, work, _ = installed
    best = json.loads((trained / "metrics.json").read_text())["best_checkpoint"]
    done = raytab(installed, "predict", "--checkpoint", best, "--input", "penguins.csv", "--output", "out.csv")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = list(csv.DictReader((work / "out.csv").open()))
    with (work / "penguins.csv").open() as f:
        assert len(rows) == sum(1 for _ in csv.DictReader(f)) == 344
    assert {r["prediction"] for r in rows} <= {"Adelie", "Chinstrap", "Gentoo"}


def test_a_command_whose_extra_is_missing_says_which_to_install(installed, trained):
    best = json.loads((trained / "metrics.json").read_text())["best_checkpoint"]
    refused = raytab(installed, "serve", "--checkpoint", best, timeout=120)
    assert refused.returncode == 2, (refused.stdout + refused.stderr)[-3000:]
    assert "pip install 'raytab[serve]'" in refused.stderr and "Traceback" not in refused.stderr


@pytest.fixture(scope="module")
def head(installed):
    """A one-node `ray start --head` cluster whose Python is the fresh venv: its jobs run
    with the installed package only. Stopped by killing its own processes (not `ray stop`)."""
    bin_dir, _, _, env = installed
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    dashboard, gcs, agent, client = (_free_port() for _ in range(4))
    head_env = {k: v for k, v in env.items() if k != "RAY_TMPDIR"}
    # Every port that `ray start` would otherwise take at a fixed default (the node agent's
    # 52365, Ray Client's 10001) is a free one: another Ray of this machine may hold those, and
    # then the head comes up without the agent that runs jobs ("No available agent").
    started = _run([str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    "--num-cpus=4", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
                    "--disable-usage-stats", f"--temp-dir={temp}"], env=head_env, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        address = f"http://127.0.0.1:{dashboard}"
        job_env = dict(head_env, RAY_ADDRESS=address, RAY_AUTH_MODE="token")  # `ray start --head`: token auth
        # The job API, and then the node's agent that runs jobs, come up a while after `ray
        # start` returns: until a no-op job is accepted, submissions fail.
        deadline = time.time() + 90
        while (tried := _run([str(bin_dir / "ray"), "job", "submit", "--no-wait", "--", "true"], env=job_env,
                             timeout=60)).returncode != 0:
            assert time.time() < deadline, f"the head's job API did not come up: {tried.stderr[-2000:]}"
            time.sleep(1)
        yield address
    finally:
        stop_ray_of(temp)
        stop_ray_of(str(bin_dir.parent))  # and what does not name the temp dir (Ray Client's server): the venv is ours
        shutil.rmtree(temp, ignore_errors=True)


def test_submit_runs_the_installed_app_as_a_job(installed, trained, head):
    _, _, work, env = installed
    best = json.loads((trained / "metrics.json").read_text())["best_checkpoint"]
    # The input is relative: the job runs in a copy of the current directory (its working dir);
    # the app comes as py_modules, its dependencies pinned by the runtime env's pip.
    started = time.time()
    done = raytab(installed, "submit", "--address", head, "predict", "--checkpoint", best, "--input", "penguins.csv",
                  "--output", str(work / "job_out.csv"), env=dict(env, APP_SUBMIT_PIP="1", APP_JOB_ID="raytab-install"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Job 'raytab-install' succeeded" in done.stdout
    assert len((work / "job_out.csv").read_text().strip().splitlines()) == 1 + 344
    print(f"\nsubmit -> job succeeded: {time.time() - started:.0f}s")
