"""The code blocks of README.md and docs/*.md, run (tests/docs_blocks.py says how, and which
are only parsed: tests/unit/test_docs.py checks those).

Page by page, README.md first, in one temporary folder that holds copies of configs/ and
data/ (what the examples read; they write under runs/ there): each page's python blocks in
order as one program in a fresh interpreter (a local Ray of its own, as a user's script
gets), then each runnable command of its bash blocks (`raytab` as `python -m app`; `serve`
and `tune` as tests/docs_blocks.py says). A page may use a run an earlier page made
(docs/runs.md reads the README's runs/quickstart).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import _free_port
from tests.docs_blocks import PAGES, REPO, SERVICE_ADDRESS, TUNE_SHRUNK, blocks, commands

pytestmark = pytest.mark.slow

RUNNABLE = []
for _page in PAGES:
    _blocks = blocks(_page)
    _python = [b for b in _blocks if b.kind == "python" and b.not_run is None]
    _commands = [c for b in _blocks if b.kind == "bash" for c in commands(b) if c.not_run_reason() is None]
    if _python or _commands:
        RUNNABLE.append(pytest.param(_page, _python, _commands, id=str(_page.relative_to(REPO))))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("docs")
    for folder in ("configs", "data"):
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("synthetic"))
    return work


@pytest.fixture(scope="module")
def env():
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}


def _run(argv, work, env, what, timeout=240):
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    took = time.perf_counter() - started
    if done.returncode != 0:
        pytest.fail(f"{what}: exit {done.returncode} after {took:.0f} s\n--- stdout\n{done.stdout[-4000:]}"
                    f"\n--- stderr\n{done.stderr[-4000:]}")
    print(f"{what}: {took:.1f} s")
    return done


@pytest.mark.parametrize("page, python_blocks, runnable_commands", RUNNABLE)
def test_page_runs(page, python_blocks, runnable_commands, workdir, env):
    if python_blocks:
        program = "".join(f"# --- {b.where()}\n{b.text}" for b in python_blocks)
        script = workdir / f"{page.stem}_examples.py"
        script.write_text(program)
        _run([sys.executable, str(script)], workdir, env, f"{page.name}: its python blocks")
    for command in runnable_commands:
        argv = [sys.executable, "-m", "app", *command.app_args]
        if command.app_args[0] == "tune" and tuple(command.app_args) in _SWEPT:
            print(f"{command.where()}: ran already ({_SWEPT[tuple(command.app_args)]})")  # a sweep of minutes, once
            continue
        if command.app_args[0] == "serve":
            _serve(argv, command, workdir, env | command.env)
            continue
        if command.app_args[0] == "tune":
            argv += TUNE_SHRUNK
            _SWEPT[tuple(command.app_args)] = command.where()
        _run(argv, workdir, env | command.env, command.where(), timeout=180)
    assert python_blocks or runnable_commands, shlex.quote(str(page))


_SWEPT: dict = {}  # `tune` commands run, as written (a tuple of words) -> where


def _serve(argv, command, work, env) -> None:
    """`serve` on a free port until it says it serves, then the blocks of its page that use
    the service (up to the next `serve`), then Ctrl-C: it must stop cleanly (exit 0)."""
    port = _free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([*argv, "--port", str(port)], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    try:
        for line in proc.stdout:  # until it serves, or ends
            said.append(line)
            if line.startswith("serving "):
                break
        assert proc.poll() is None, f"{command.where()}: exit {proc.returncode}\n{''.join(said)[-4000:]}"
        blocks_of_page = blocks(command.block.page)
        after = [b for b in blocks_of_page if b.line > command.block.line]
        nxt = next((b.line for b in after if any((c.app_args or [""])[0] == "serve" for c in commands(b))), None)
        for block in (b for b in after if b.on_service and (nxt is None or b.line < nxt)):
            script = "set -euo pipefail\n" + block.text.replace(SERVICE_ADDRESS, f"127.0.0.1:{port}")
            done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, f"{block.where()}: exit {done.returncode}\n{done.stdout}{done.stderr}"
            print(f"{block.where()}: against the service: {done.stdout.strip()[:200]}")
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{command.where()}: exit {proc.returncode} after Ctrl-C\n{rest[-4000:]}"
    print(f"{command.where()}: served, then stopped: {time.perf_counter() - started:.1f} s")

