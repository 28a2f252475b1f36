"""Fault injection for tests and demos: make one rank die once, at a chosen point.

    APP_FAULT="rank=1,epoch=3,step=10" python -m app train --config c.yaml
    APP_FAULT="rank=0,epoch=2,at=upload" python -m app train --config c.yaml
    APP_FAULT="rank=1,epoch=3,step=5,then=hang" python -m app train --config c.yaml

Keys: `rank` (default 0), `epoch` (1-based, required), and either `step` (0-based step
of that epoch; default 0) or `at`: `step` (default), `save` (after writing part of the
checkpoint, before its manifest) or `upload` (after copying part of the checkpoint to
storage, before its manifest). `then` says what happens there: `kill` (default), the
process kills itself with SIGKILL, as a crash or an OOM kill would; or `hang`, it stops
there, as a hung process would, until something kills it from outside. A test that must
kill a worker or the driver at an exact point, not after a guessed delay, waits for the
marker file, which then holds the hung process's pid as JSON. The marker file in the run
folder makes the fault fire once per run, so the restarted worker group goes on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass

from app import storage
from app.errors import UserError

log = logging.getLogger(__name__)

ENV_VAR = "APP_FAULT"
POINTS = ("step", "save", "upload")
ACTIONS = ("kill", "hang")
HANG_S = 600.0  # then a hang goes on: a forgotten one never stalls a run for good


@dataclass(frozen=True)
class Fault:
    rank: int
    epoch: int
    step: int = 0
    at: str = "step"
    then: str = "kill"

    @property
    def marker_name(self) -> str:
        return f".fault-{self.rank}-{self.epoch}-{self.step}-{self.at}"


def parse(text: str | None) -> Fault | None:
    """The fault described by $APP_FAULT (or `text`), or None."""
    if not text:
        return None
    try:
        fields = dict(part.split("=", 1) for part in text.replace(" ", "").split(",") if part)
        fault = Fault(rank=int(fields.pop("rank", 0)), epoch=int(fields.pop("epoch")),
                      step=int(fields.pop("step", 0)), at=fields.pop("at", "step"), then=fields.pop("then", "kill"))
    except (KeyError, ValueError):
        raise UserError(f"{ENV_VAR}={text!r}: expected e.g. rank=1,epoch=3,step=10 or rank=0,epoch=2,at=upload")
    if fields or fault.at not in POINTS or fault.then not in ACTIONS:
        raise UserError(f"{ENV_VAR}={text!r}: unknown key, point or action; keys rank, epoch, step, "
                        f"at ({'|'.join(POINTS)}), then ({'|'.join(ACTIONS)})")
    return fault


def from_env() -> Fault | None:
    return parse(os.environ.get(ENV_VAR))


def maybe_die(fault: Fault | None, fs: storage.FileSystem, path: str, *, rank: int, epoch: int, step: int = 0,
              at: str = "step") -> None:
    """Kill (or hang) this process if it is the chosen point and the fault has not fired yet.

    `path` is the run folder on `fs`, where the marker goes.
    """
    if fault is None or (fault.rank, fault.epoch, fault.at) != (rank, epoch, at):
        return
    if at == "step" and fault.step != step:
        return
    marker = f"{path}/{fault.marker_name}"
    if storage.kind(fs, marker) is not None:
        return
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(marker) as f:
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "then": fault.then}).encode())
    where = f"epoch {epoch} ({at}{f' {step}' if at == 'step' else ''})"
    if fault.then == "hang":
        log.info(f"fault injection: rank {rank} (pid {os.getpid()}) hangs at {where} until killed")
        time.sleep(HANG_S)  # the hang itself: what is injected, not a wait for anything
        return
    log.info(f"fault injection: rank {rank} dies at {where}")
    os.kill(os.getpid(), signal.SIGKILL)
