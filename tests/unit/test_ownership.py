"""What the app may delete and where it may write: outputs replaced, never mixed; `--fresh`
and `--overwrite` only on folders the app wrote, and only after the inputs checked out;
one live driver per run folder. On a local disk and on a real S3 server (moto), no Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from app import lease, predicting, runs, storage
from app.errors import UserError
from tests.conftest import penguins_tree
from tests.unit.test_cli_errors import assert_bad_input, checkpoint, write_config

pytestmark = pytest.mark.usefixtures("ray_must_not_start")  # (tests/conftest.py)


def finished_run(tmp_path):
    """A run folder as a finished `train` leaves it."""
    run = tmp_path / "runs" / "quickstart"
    (run / "checkpoint_epoch_0003").mkdir(parents=True)
    storage.mark_owned(str(run), "run")
    (run / runs.METRICS).write_text(json.dumps({"test": {"accuracy": 0.9}}))
    return run


@pytest.fixture
def other_driver():
    """A live process of this host standing in for another driver that holds a lease."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield {"token": "other", "host": socket.gethostname(), "pid": proc.pid,
           "process_start": lease._process_start(proc.pid), "since": time.time(), "heartbeat": time.time()}
    proc.kill()
    proc.wait()


# ---------------------------------------------------------------- --fresh


def test_fresh_with_a_mistyped_input_deletes_nothing(tmp_path, capsys):
    run = finished_run(tmp_path)
    path = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(tmp_path / "typo.csv")))
    assert_bad_input(["train", "--config", str(path), "--fresh"], capsys, "data.train", "typo.csv")
    assert (run / runs.METRICS).exists() and (run / "checkpoint_epoch_0003").is_dir()


def test_fresh_while_another_driver_holds_the_run_deletes_nothing(tmp_path, capsys, other_driver):
    run = finished_run(tmp_path)
    (run / runs.LEASE).write_text(json.dumps(other_driver))
    path = write_config(tmp_path, penguins_tree(tmp_path))
    assert_bad_input(["train", "--config", str(path), "--fresh"], capsys, "in use by another driver",
                     f"pid {other_driver['pid']}")
    assert (run / runs.METRICS).exists() and json.loads((run / runs.LEASE).read_text())["token"] == "other"


def test_a_folder_the_app_did_not_write_is_never_a_run_folder(tmp_path, capsys):
    mine = tmp_path / "runs" / "quickstart"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    path = write_config(tmp_path, penguins_tree(tmp_path))
    for extra in ([], ["--fresh"]):
        assert_bad_input(["train", "--config", str(path), *extra], capsys, "did not write", str(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


# ---------------------------------------------------------------- --overwrite


def test_predict_overwrite_refuses_a_folder_the_app_did_not_write(tmp_path, capsys, checkpoint):  # noqa: F811
    pd.DataFrame({"a": [1.0], "c": ["p"]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "notes.txt").write_text("mine")
    assert_bad_input(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path), "--overwrite"], capsys, "--output", "did not write")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_overwrite_refuses_a_folder_the_app_did_not_write(tmp_path, capsys, checkpoint):  # noqa: F811
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    assert_bad_input(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--overwrite"],
                     capsys, "--output", "did not write")
    assert (tmp_path / "out" / "precious.txt").read_text() == "x"


def test_export_overwrite_replaces_its_own_folder(tmp_path, checkpoint):  # noqa: F811
    from app.cli import main

    out = tmp_path / "exports" / "model"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    (out / "stale.txt").write_text("from an older export")
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out), "--overwrite"]) == 0
    assert (out / "model.onnx").is_file() and not (out / "stale.txt").exists()
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # no staging or old copy left beside it


# ---------------------------------------------------------------- outputs replaced, never mixed


def table(rows: int, start: int = 0) -> pa.Table:
    return pa.table({"row": list(range(start, start + rows))})


def failing(rows: int):
    yield table(rows)
    raise RuntimeError("the job died here")


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return f"{request.getfixturevalue('s3')}/ownership-{time.time_ns()}/out"


def read_rows(location: str) -> list[int]:
    fs, path = storage.filesystem(location)
    parts = [e.path for e in storage.entries(fs, path) if e.name.endswith(".parquet")]
    return sorted(r for part in parts for r in pq.read_table(part, filesystem=fs).column("row").to_pylist())


def write(location: str, batches, overwrite: bool = False) -> int:
    """`predict`'s output step, with a folder's parts written here as one scoring task writes
    its piece's."""
    return predicting.write_rows(batches, predicting.check_output(location, overwrite))


def test_a_folder_output_is_replaced_whole_and_a_failed_job_keeps_the_old_one(location, monkeypatch):
    monkeypatch.setattr(predicting, "ROWS_PER_PART", 10)
    assert write(location, iter([table(10), table(10, 10), table(5, 20)])) == 25
    names = [e.name for e in storage.listdir(location)]
    assert names == [storage.OWNED, predicting.SUCCESS_MARKER, "part-00000-000000000000.parquet",
                     "part-00000-000000000010.parquet", "part-00000-000000000020.parquet"]

    with pytest.raises(RuntimeError, match="died"):
        write(location, failing(3), overwrite=True)
    assert read_rows(location) == list(range(25))  # the previous output, whole
    assert storage.exists(storage.join(location, predicting.SUCCESS_MARKER))

    assert write(location, iter([table(4, 100)]), overwrite=True) == 4
    assert read_rows(location) == list(range(100, 104))  # no surplus parts of the old output
    assert [e.name for e in storage.listdir(storage.parent(location))] == ["out"]  # no staging left

    with pytest.raises(UserError, match="--input holds no rows"):
        write(location, iter([table(0)]), overwrite=True)
    assert read_rows(location) == list(range(100, 104))


def test_the_pieces_parts_are_checked_into_one_schema(tmp_path, monkeypatch):
    """Each scoring task writes its blocks' parts, named by piece and row so that the names
    sort in input order; the driver then holds every part to the first part's schema, as a
    single writer would."""
    monkeypatch.setattr(predicting, "ROWS_PER_PART", 2)
    fs, folder = storage.filesystem(str(tmp_path))
    first = pa.table({"row": [0, 1, 2], "note": ["a", None, "b"]})
    empty_note = pa.table({"row": [3, 4], "note": pa.nulls(2)})  # a column empty in one file reads as null
    parts = [*predicting.write_part(empty_note, fs, folder, 10, 0, 5), *predicting.write_part(first, fs, folder, 9, 0, 5)]
    assert [p.name for p in sorted(parts)] == ["part-00009-000000000000.parquet", "part-00009-000000000002.parquet",
                                               "part-00010-000000000000.parquet"]
    assert predicting.finish_parts(parts, fs, folder) == 5
    read = pq.read_table(tmp_path)  # the folder: parts in name order, one schema
    assert read.schema == first.schema and read.column("row").to_pylist() == [0, 1, 2, 3, 4]

    other = predicting.write_part(pa.table({"row": [5]}), fs, folder, 11, 0, 5)  # no "note" column
    with pytest.raises(UserError, match="--input: the input files disagree on their columns or types"):
        predicting.finish_parts([*parts, *other], fs, folder)


def test_a_column_empty_in_the_first_file_takes_its_type_from_the_others(tmp_path):
    fs, folder = storage.filesystem(str(tmp_path))
    typed = pa.table({"row": [2], "note": ["b"]})
    parts = [*predicting.write_part(pa.table({"row": [0, 1], "note": pa.nulls(2)}), fs, folder, 0, 0, 5),
             *predicting.write_part(typed, fs, folder, 1, 0, 5)]
    assert predicting.finish_parts(parts, fs, folder) == 3
    read = pq.read_table(tmp_path)
    assert read.schema == typed.schema and read.column("note").to_pylist() == [None, None, "b"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_one_file_takes_a_column_empty_in_the_first_file_from_the_next(tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    batches = [pa.table({"row": [0, 1], "note": pa.nulls(2)}), pa.table({"row": [2], "note": pa.nulls(1)}),
               pa.table({"row": [3], "note": ["b"]}), pa.table({"row": [4], "note": pa.nulls(1)})]
    assert write(str(out), iter(batches)) == 5
    read = pq.read_table(out) if fmt == "parquet" else read_csv(out)
    assert read.column("row").to_pylist() == [0, 1, 2, 3, 4]
    assert read.column("note").to_pylist() == [None, None, None, "b", None]
    assert read.schema.field("note").type == pa.string()


def test_one_file_holds_back_no_batch_once_every_column_has_a_type(tmp_path):
    written = []

    def scored():
        yield pa.table({"row": [0, 1], "note": ["a", None]})
        assert any(tmp_path.iterdir()), "the writer waits for a batch it does not need"
        written.append(True)
        yield pa.table({"row": [2], "note": ["b"]})

    assert write(str(tmp_path / "out.parquet"), scored()) == 3
    assert written  # the writer had started before the second batch was asked for


def test_one_file_whose_column_is_typed_too_late_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(predicting, "LOOKAHEAD_BYTES", 1)  # the writer waits for no later batch
    empty, typed_but_empty = pa.table({"row": [0, 1], "note": pa.nulls(2)}), pa.table({"row": [2], "note": [None]})
    assert write(str(tmp_path / "empty.parquet"), iter([empty, typed_but_empty])) == 3  # still empty: fine
    assert pq.read_table(tmp_path / "empty.parquet").column("note").null_count == 3
    (tmp_path / "empty.parquet").unlink()
    batches = [empty, pa.table({"row": [2], "note": ["b"]})]
    with pytest.raises(UserError, match="column 'note' is empty in the first .* write to a folder or a .csv file"):
        write(str(tmp_path / "out.parquet"), iter(batches))
    assert list(tmp_path.iterdir()) == []  # nothing half-written left
    # CSV has no types: a column empty so far is text, and later values fit it.
    assert write(str(tmp_path / "out.csv"), iter(batches)) == 3
    assert read_csv(tmp_path / "out.csv").column("note").to_pylist() == [None, None, "b"]


def read_csv(path: Path) -> pa.Table:
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))


def test_parts_must_all_be_in_the_folder(tmp_path):
    """A part a task wrote where this process cannot see it (a node's own disk) fails the
    job, naming the output; a part no record names (a retried attempt's) goes."""
    fs, folder = storage.filesystem(str(tmp_path))
    parts = predicting.write_part(pa.table({"row": [0, 1]}), fs, folder, 0, 0, 5)
    predicting.write_part(pa.table({"row": [9]}), fs, folder, 7, 0, 5)  # written, named by no record
    assert predicting.finish_parts(parts, fs, folder) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000-000000000000.parquet"]
    elsewhere = predicting.Part("part-00001-000000000000.parquet", 3, parts[0].schema)
    with pytest.raises(UserError, match=r"--output: 1 part\(s\) written for it are not in .*part-00001-000000000000"):
        predicting.finish_parts([*parts, elsewhere], fs, folder)


def test_a_part_that_cannot_be_written_names_the_output_and_leaves_nothing(tmp_path):
    fs, _ = storage.filesystem(str(tmp_path))
    with pytest.raises(UserError, match=r"--output: cannot write .*/part-00000-000000000000.parquet"):
        predicting.write_part(pa.table({"row": [0]}), fs, str(tmp_path / "missing"), 0, 0, 5)
    assert list(tmp_path.iterdir()) == []


def test_a_file_output_survives_a_failed_overwrite(location):
    target = location + ".parquet"
    write(target, iter([table(6)]))
    with pytest.raises(RuntimeError, match="died"):
        write(target, failing(2), overwrite=True)
    fs, path = storage.filesystem(target)
    assert pq.read_table(path, filesystem=fs).column("row").to_pylist() == list(range(6))
    assert [e.name for e in storage.listdir(storage.parent(target))] == ["out.parquet"]


# ---------------------------------------------------------------- a switch that fails midway


def staged(location: str, *tables: pa.Table) -> tuple[storage.FileSystem, str]:
    """An output of one part per table, staged beside the folder `location` as `predict`
    stages it: (filesystem, staging path)."""
    fs, path = storage.filesystem(location)
    staging = storage.staging_path(path)
    fs.create_dir(staging, recursive=True)
    for i, t in enumerate(tables):
        pq.write_table(t, f"{staging}/part-{i:05d}.parquet", filesystem=fs)
    storage.mark_owned_path(fs, staging, "predictions")
    return fs, staging


def test_a_local_switch_whose_second_rename_fails_puts_the_old_folder_back(tmp_path):
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's temporary folder")
    final = str(tmp_path / "out")
    fs, staging = staged(final, table(10), table(5, 10))
    storage.publish_dir(fs, staging, final, success=predicting.SUCCESS_MARKER)  # the previous output
    # The new output staged on another filesystem (a tmpfs): the rename that switches it in
    # fails (EXDEV), after the old folder was renamed aside. A real failure, also as root.
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other_disk:
        staging = f"{other_disk}/.out.tmp"
        fs.create_dir(staging)
        pq.write_table(table(4, 100), f"{staging}/part-00000.parquet")
        with pytest.raises(OSError, match="[Cc]ross-device"):
            storage.publish_dir(fs, staging, final, success=predicting.SUCCESS_MARKER)
        assert sorted(p.name for p in Path(staging).iterdir()) == [predicting.SUCCESS_MARKER, "part-00000.parquet"]
    assert read_rows(final) == list(range(15))  # the previous output, whole and readable
    assert sorted(p.name for p in Path(final).iterdir()) == [storage.OWNED, predicting.SUCCESS_MARKER,
                                                             "part-00000.parquet", "part-00001.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left aside


def test_an_object_store_switch_cut_short_keeps_the_new_output_whole_and_says_where(s3):
    """An object store cannot rename a prefix: the old parts go before the new ones are
    copied, so a cut-short switch cannot keep the old output. What it keeps: the complete new
    output in staging, named in the error, and no `_SUCCESS` over the mixed folder."""
    import boto3

    final = f"{s3}/publish-{time.time_ns()}/out"
    fs, path = storage.filesystem(final)
    storage.publish_dir(fs, staged(final, table(10))[1], path, success=predicting.SUCCESS_MARKER)  # the previous one
    staging = staged(final, table(4, 100), table(3, 104))[1]
    # Its second part archived to Glacier (as a lifecycle rule would): S3 refuses to copy it,
    # so the switch fails after the old part went and the new first part was copied.
    bucket, key = f"{staging}/part-00001.parquet".split("/", 1)
    body = fs.open_input_stream(f"{bucket}/{key}").read()
    client = boto3.client("s3")
    client.put_object(Bucket=bucket, Key=key, Body=body, StorageClass="GLACIER")
    with pytest.raises(storage.PublishError, match=f"the complete new output is kept in {staging}"):
        storage.publish_dir(fs, staging, path, success=predicting.SUCCESS_MARKER)
    assert [e.name for e in storage.listdir(final)] == [storage.OWNED, "part-00000.parquet"]  # no _SUCCESS
    assert read_rows(final) == list(range(100, 104))  # the old part is gone: nothing old mixed in

    client.restore_object(Bucket=bucket, Key=key, RestoreRequest={"Days": 1})  # the kept copy, switched in again
    storage.publish_dir(fs, staging, path, success=predicting.SUCCESS_MARKER)
    assert read_rows(final) == list(range(100, 107))
    assert storage.exists(storage.join(final, predicting.SUCCESS_MARKER))
    assert [e.name for e in storage.listdir(storage.parent(final))] == ["out"]  # staging gone


# ---------------------------------------------------------------- one live driver per run


def test_a_second_driver_is_refused_and_the_lease_goes_with_the_first(location):
    with lease.held(location, what="run"):
        assert storage.read_json(storage.join(location, runs.LEASE))["pid"] > 0
        with pytest.raises(UserError, match=r"in use by another driver \(pid \d+ on "):
            lease.Lease(location).acquire(what="run")
    assert not storage.exists(storage.join(location, runs.LEASE))


def test_the_lease_of_a_driver_that_died_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)
    stale = {"token": "dead", "host": socket.gethostname(), "pid": pid, "process_start": "1",
             "since": time.time(), "heartbeat": time.time()}
    storage.write_json(str(tmp_path / runs.LEASE), stale)
    with lease.held(str(tmp_path), what="run") as held:
        assert storage.read_json(str(tmp_path / runs.LEASE))["token"] == held.token
    assert f"taking over the lease of {tmp_path}: pid {pid} on {socket.gethostname()} is no longer running" \
        in capsys.readouterr().err


def test_a_lease_of_another_host_is_live_until_its_heartbeat_stops(tmp_path, capsys):
    elsewhere = {"token": "far", "host": "another-node", "pid": 1, "process_start": "1", "since": time.time()}
    storage.write_json(str(tmp_path / runs.LEASE), dict(elsewhere, heartbeat=time.time() - 5))
    with pytest.raises(UserError, match="pid 1 on another-node"):
        lease.Lease(str(tmp_path)).acquire(what="run")
    storage.write_json(str(tmp_path / runs.LEASE), dict(elsewhere, heartbeat=time.time() - lease.STALE_S - 5))
    with lease.held(str(tmp_path), what="run"):
        pass
    assert "has not renewed it for" in capsys.readouterr().err


def test_the_heartbeat_keeps_the_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    with lease.held(str(tmp_path), what="run"):
        first = storage.read_json(str(tmp_path / runs.LEASE))["heartbeat"]
        deadline = time.time() + 10
        while storage.read_json(str(tmp_path / runs.LEASE))["heartbeat"] == first:
            assert time.time() < deadline, "the heartbeat was not renewed"
            time.sleep(0.01)


def test_a_run_refused_before_it_wrote_anything_leaves_no_folder(tmp_path):
    folder = str(tmp_path / "runs" / "new")
    with pytest.raises(UserError, match="refused"), lease.run_folder(folder, fresh=False, what="run"):
        assert storage.exists(storage.join(folder, storage.OWNED))
        raise UserError("refused on the cluster")
    assert not storage.exists(folder)


def test_an_empty_lease_file_left_by_a_crash_is_taken_over(tmp_path, capsys):
    (tmp_path / runs.LEASE).write_text("")  # a driver killed between creating and writing it
    with lease.held(str(tmp_path), what="run") as held:
        assert storage.read_json(str(tmp_path / runs.LEASE))["token"] == held.token
    assert "its lease file is unreadable" in capsys.readouterr().err


def test_a_run_of_an_earlier_version_resumes_but_fresh_never_deletes_it(tmp_path):
    old = tmp_path / "runs" / "quickstart"
    old.mkdir(parents=True)
    (old / runs.CONFIG).write_text("name: quickstart\ndata: {train: x.csv, label: y}\nmodel: {kind: mlp}\n")
    with pytest.raises(UserError, match="did not write"), lease.run_folder(str(old), fresh=True, what="run"):
        pass
    assert (old / runs.CONFIG).exists()
    with lease.run_folder(str(old), fresh=False, what="run"):
        pass
    assert (old / storage.OWNED).exists() and (old / runs.CONFIG).exists()
