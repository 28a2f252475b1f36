"""Progress bars only where a terminal shows them, and train.log: what a run printed, without
its bars, credentials redacted, appended by a resumed run (on a local disk and on object
storage). A whole run in a terminal and piped: tests/e2e/test_cli.py and tests/e2e/test_driver_failure.py."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from app import logs, progress, storage


@pytest.fixture
def terminal():
    """The writing end of a real pseudo-terminal, as a text stream, 40 rows x 100 columns."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    stream = os.fdopen(slave, "w", buffering=1)
    yield stream
    stream.close()
    os.close(master)


def test_bars_are_drawn_on_a_terminal_not_on_a_pipe_nor_in_ci(terminal, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert progress.shown(terminal)
    read, write = os.pipe()
    with os.fdopen(write, "w") as piped:
        assert not progress.shown(piped)
    os.close(read)
    monkeypatch.setenv("CI", "1")
    assert not progress.shown(terminal)
    monkeypatch.setenv("CI", "false")
    assert progress.shown(terminal)
    # where none is shown, the bar is one that does nothing (no tqdm at all)
    assert progress.bar("x", total=3, show=False) is progress.NO_BAR
    assert progress.worker_bar(False) is progress.NO_BAR


def test_train_log_keeps_the_lines_without_bars_colours_or_secrets(tmp_path, monkeypatch, capsys):
    from tqdm.std import tqdm

    uri = str(tmp_path / "train.log")
    with logs.run_log(uri):
        print("data: 344 rows")
        logging.getLogger("app.test").warning("s3://AK:wJalr/secret@bucket/runs is slow")
        with progress.bar("data pass 1/2", total=3, show=True) as bar:  # drawn and cleared (leave=False)
            for _ in range(3):
                bar.update()
        kept = tqdm(desc="epoch 1/2", total=4, file=sys.stderr, mininterval=0)  # left on screen, as Ray's
        for _ in range(4):
            kept.update()
            sys.stdout.write("\x1b[36m(RayTrainWorker pid=1)\x1b[0m ")  # a worker line between frames
            print("epoch line")
        kept.close()
        sys.stdout.write("no newline at the end")
    err = capsys.readouterr().err
    assert "\r" in err and "epoch 1/2: 100%" in err and "data pass 1/2" in err  # the bars were drawn there
    logged = Path(uri).read_text()
    assert logged == ("data: 344 rows\n"
                      "warning: s3://AK:***@bucket/runs is slow\n"
                      + "(RayTrainWorker pid=1) epoch line\n" * 4 +
                      "no newline at the end\n")

    with logs.run_log(uri):  # a resumed run adds its lines
        print("resuming from checkpoint_epoch_0001")
    assert Path(uri).read_text().endswith("no newline at the end\nresuming from checkpoint_epoch_0001\n")
    assert sys.stdout is not None and not isinstance(sys.stdout, logs._Tee)  # put back


def test_a_run_that_printed_nothing_leaves_no_train_log(tmp_path):
    with logs.run_log(str(tmp_path / "train.log")):
        pass
    assert not (tmp_path / "train.log").exists()


def test_train_log_on_object_storage_is_appended_too(s3, monkeypatch):
    uri = f"{s3}/progress-test/run/train.log"
    monkeypatch.setattr(logs.RunLog, "UPLOAD_S", 3600.0)  # so the first line alone is uploaded at once
    with logs.run_log(uri) as log:
        print("first attempt: line 1")
        assert storage.read_text(uri) == "first attempt: line 1\n"  # a driver killed now keeps it
        print("first attempt: line 2")
        assert storage.read_text(uri) == "first attempt: line 1\n"  # later lines: at most every UPLOAD_S
    assert storage.read_text(uri) == "first attempt: line 1\nfirst attempt: line 2\n"
    with logs.run_log(uri):
        print("second attempt, s3://AK:SK@bucket/x")
    assert storage.read_text(uri).splitlines() == ["first attempt: line 1", "first attempt: line 2",
                                                   "second attempt, s3://AK:***@bucket/x"]
    assert log.uri == uri


def test_a_trial_prefix_starts_every_line_of_the_app_logger(capsys):
    logs.to_terminal()
    try:
        logs.prefix_lines("[a1b2c_00001] ")
        logging.getLogger("app.test").info("epoch 1/3\nsecond line")
        logging.getLogger("app.test").warning("slow")
    finally:
        logs.prefix_lines("")
    logging.getLogger("app.test").info("after")
    out, err = capsys.readouterr()
    assert out == "[a1b2c_00001] epoch 1/3\n[a1b2c_00001] second line\nafter\n"
    assert err == "[a1b2c_00001] warning: slow\n"
