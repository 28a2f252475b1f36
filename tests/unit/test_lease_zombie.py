"""A lease whose owner was killed but not yet reaped (a zombie) is stale, not live."""

from __future__ import annotations

import socket
import subprocess
import time

from app import lease, runs, storage


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_a_lease_of_a_killed_unreaped_owner_is_taken_over(tmp_path, monkeypatch, capsys):
    owner = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # lives until its stdin closes
    try:
        held = {"token": "owner", "host": socket.gethostname(), "pid": owner.pid,
                "process_start": lease._process_start(owner.pid), "since": time.time(), "heartbeat": time.time()}
        assert held["process_start"] is not None
        assert lease.stale_reason(held) is None  # alive: its lease holds
        owner.kill()
        deadline = time.monotonic() + 10
        while _state(owner.pid) != "Z":  # dead, and not reaped: nothing here has waited for it
            assert time.monotonic() < deadline, f"pid {owner.pid} never became a zombie"
            time.sleep(0.01)
        assert lease.stale_reason(held) == f"pid {owner.pid} on {socket.gethostname()} is no longer running"

        storage.write_json(str(tmp_path / runs.LEASE), held)
        monkeypatch.setattr(lease, "SETTLE_S", 0.0)
        with lease.held(str(tmp_path), what="run") as mine:
            assert storage.read_json(str(tmp_path / runs.LEASE))["token"] == mine.token
        assert "is no longer running" in capsys.readouterr().err
    finally:
        owner.kill()
        owner.wait()
        owner.stdin.close()

