"""An output is claimed while a command writes it: a second command writing the same output is
refused at its start, and what appears or changes at the output meanwhile is never replaced
(the new output stays under its staging name, which the error names). `evaluate --output`
naming a folder is refused before any scoring. On a local disk and on a real S3 server
(moto), no Ray."""

from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import app
from app import export, predicting, storage
from app.errors import UserError
from tests.unit.test_cli_errors import assert_bad_input, checkpoint  # noqa: F401 - a fixture
from tests.unit.test_ownership import location  # noqa: F401 - a fixture: local and s3

pytestmark = pytest.mark.usefixtures("ray_must_not_start")  # (tests/conftest.py)


def claim_file(output: str) -> str:
    return storage.join(storage.parent(output), f".{storage.name(output)}.claim")


def test_an_output_is_claimed_by_one_command_at_a_time(location):  # noqa: F811
    fs, path = storage.filesystem(location)
    with storage.claimed(fs, path, location, "--output"):
        assert json.loads(storage.read_text(claim_file(location)))["pid"] == os.getpid()
        with pytest.raises(UserError, match=r"^--output \S+ is being written by another command \(pid"), \
                storage.claimed(fs, path, location, "--output"):
            pass
        assert storage.exists(claim_file(location))  # the refused command leaves the holder's claim
    assert not storage.exists(claim_file(location))
    with pytest.raises(RuntimeError), storage.claimed(fs, path, location, "--output"):
        raise RuntimeError("the command failed")
    assert not storage.exists(claim_file(location))  # given back on failure too


def test_the_claim_of_a_process_that_is_gone_is_taken_over(tmp_path):
    output = str(tmp_path / "out.csv")
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process now
    storage.write_json(claim_file(output), {"token": "x", "host": os.uname().nodename, "pid": dead.pid, "since": 0})
    fs, path = storage.filesystem(output)
    with storage.claimed(fs, path, output, "--output"):
        assert json.loads(storage.read_text(claim_file(output)))["pid"] == os.getpid()
    assert not storage.exists(claim_file(output))


def grow_then(action, rows: int = 3):
    """Scored batches; `action()` runs after the first, as another writer would meanwhile."""
    yield pa.table({"row": list(range(rows))})
    action()
    yield pa.table({"row": [rows]})


def staging_copies(output: str) -> list[str]:
    return [e.name for e in storage.listdir(storage.parent(output)) if ".tmp-" in e.name]


@pytest.mark.parametrize("name", ["out", "out.parquet"])
def test_an_output_that_appears_meanwhile_is_kept_and_so_is_the_new_one(location, name):  # noqa: F811
    output = storage.join(storage.parent(location), name)
    out = predicting.check_output(output, overwrite=False)
    theirs = storage.join(output, "theirs.txt") if name == "out" else output
    with pytest.raises(UserError, match=r"appeared at --output .* while this command ran; it was left as it is, "
                                        r"and the new output is kept in (\S+):") as refused:
        predicting.write_rows(grow_then(lambda: storage.write_text(theirs, "mine")), out)
    assert storage.read_text(theirs) == "mine"  # not replaced, not deleted
    [kept] = staging_copies(output)
    assert storage.join(storage.parent(output), kept) in str(refused.value)
    fs, path = storage.filesystem(storage.join(storage.parent(output), kept))
    parts = [e.path for e in storage.entries(fs, path) if e.name.endswith(".parquet")] if name == "out" else [path]
    assert sum(pq.read_table(p, filesystem=fs).num_rows for p in parts) == 4  # the new output, whole


def test_overwrite_replaces_what_was_there_at_the_start_only(tmp_path):
    output = str(tmp_path / "out.csv")
    (tmp_path / "out.csv").write_text("row\n0\n")
    out = predicting.check_output(output, overwrite=True)
    with pytest.raises(UserError, match="--output .* was changed while this command ran"):
        predicting.write_rows(grow_then(lambda: (tmp_path / "out.csv").write_text("row\nnew\n")), out)
    assert (tmp_path / "out.csv").read_text() == "row\nnew\n"
    assert predicting.write_rows(grow_then(lambda: None), predicting.check_output(output, overwrite=True)) == 4
    assert pd.read_csv(tmp_path / "out.csv")["row"].tolist() == [0, 1, 2, 3]


def test_predict_refuses_an_output_another_command_is_writing(tmp_path, checkpoint, capsys):  # noqa: F811
    data = tmp_path / "in.csv"
    data.write_text("a,c\n0.5,p\n0.1,q\n")
    output = str(tmp_path / "out.csv")
    fs, path = storage.filesystem(output)
    with storage.claimed(fs, path, output, "--output"):  # as the other command would hold it
        assert_bad_input(["predict", "--checkpoint", str(checkpoint), "--input", str(data), "--output", output],
                         capsys, f"--output {output} is being written by another command")
        with pytest.raises(UserError, match="being written by another command"):
            app.predict(checkpoint, pd.read_csv(data), output)
    assert not (tmp_path / "out.csv").exists()
    assert app.predict(checkpoint, pd.read_csv(data), output) == 2  # claimed, written, given back
    assert not storage.exists(claim_file(output))


def test_export_refuses_an_output_another_command_is_writing(tmp_path, checkpoint):  # noqa: F811
    output = str(tmp_path / "exported")
    fs, path = storage.filesystem(output)
    with storage.claimed(fs, path, output, "--output"), \
            pytest.raises(UserError, match=f"--output {output} is being written by another command"):
        export.export(str(checkpoint), output)
    assert not (tmp_path / "exported").exists()


def test_evaluate_refuses_a_folder_as_its_output_before_scoring(tmp_path, checkpoint, capsys):  # noqa: F811
    data = tmp_path / "labelled.csv"
    data.write_text("a,c,y\n0.5,p,n\n0.1,q,y\n")
    (tmp_path / "results").mkdir()
    assert_bad_input(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--output",
                      str(tmp_path / "results")], capsys, f"--output {tmp_path / 'results'} is a folder")
