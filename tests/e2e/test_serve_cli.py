"""`serve` from the real CLI: a checkpoint served on loopback with a bearer token from a
file until SIGINT, then shut down with exit 0 (a bad checkpoint: tests/unit/test_cli_errors.py;
a listener beyond loopback without a token: tests/integration/test_serve.py)."""

from __future__ import annotations

import secrets
import select
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import REPO, _free_port
from tests.integration.test_serve import penguins_checkpoint

pytestmark = pytest.mark.slow


def test_serve_answers_until_sigint(tmp_path, cli_env):
    checkpoint = penguins_checkpoint(tmp_path / "ckpt", seed=0, epoch=3)
    token = secrets.token_urlsafe(32)
    (tmp_path / "token").write_text(token + "\n")
    auth = {"Authorization": f"Bearer {token}"}
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "app", "serve", "--checkpoint", str(checkpoint),
                               "--port", str(port), "--token-file", str(tmp_path / "token")], cwd=REPO, env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        ready, _, _ = select.select([server.stdout], [], [], 120)  # its first line says it serves
        assert ready and server.poll() is None, server.communicate(timeout=30)
        first_line = server.stdout.readline()
        assert f"serving {checkpoint} (epoch 3) with 1 replica(s) at {url}" in first_line
        assert "a bearer token is required" in first_line
        assert requests.get(f"{url}/health", timeout=30).status_code == 401
        health = requests.get(f"{url}/health", headers=auth, timeout=30)
        assert {k: v for k, v in health.json().items() if k != "replica"} == \
            {"status": "ok", "kind": "tabm", "epoch": 3, "task": "classification"}
        assert str(tmp_path) not in health.text
        record = {"island": "Biscoe", "bill_length_mm": 45.1, "bill_depth_mm": 14.5, "flipper_length_mm": 215,
                  "body_mass_g": 5000, "sex": None, "year": 2008}
        answer = requests.post(f"{url}/predict", json={"records": [record]}, headers=auth, timeout=30).json()
        assert answer["predictions"][0] in ("Adelie", "Chinstrap", "Gentoo")
        assert sum(answer["probabilities"][0].values()) == pytest.approx(1.0)
    finally:
        server.send_signal(signal.SIGINT)
        stdout, stderr = server.communicate(timeout=120)
    assert server.returncode == 0, stderr[-3000:]
    assert "SIGINT: stopped" in stdout
    assert "Traceback" not in stderr
    assert token not in stdout and token not in stderr
    deadline = time.monotonic() + 30  # nothing listens there any more, once Ray's processes are gone
    while True:
        try:
            requests.get(f"{url}/health", timeout=5)
        except requests.ConnectionError:
            break
        assert time.monotonic() < deadline, "the port still answers after serve exited"
        time.sleep(0.5)
