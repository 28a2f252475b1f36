"""app/storage.py on the local filesystem (object storage: tests/integration/test_object_storage.py)."""

from __future__ import annotations

import os

import pytest

from app import storage
from app.errors import UserError


def test_json_round_trip_is_atomic_and_absent_is_none(tmp_path):
    target = str(tmp_path / "deep" / "er" / "metrics.json")
    assert storage.read_json(target) is None and not storage.exists(target)
    storage.write_json(target, {"a": [1, 2.5, None]})
    assert storage.read_json(target) == {"a": [1, 2.5, None]}
    assert os.listdir(tmp_path / "deep" / "er") == ["metrics.json"]  # no temporary file left
    storage.write_text(target, "{}")
    assert storage.read_json(target) == {} and storage.is_file(target) and not storage.is_dir(target)


@pytest.mark.parametrize("content", [b"", b'{"cut": ', b"\xff\xfe\x00garbage"])
def test_unreadable_json_is_a_user_error_naming_the_file(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"state.json is not valid JSON"):
        storage.read_json(str(path))


def test_listing_removal_and_locations(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b" / "c.txt").write_text("yz")
    listed = storage.listdir(str(tmp_path))
    assert [(e.name, e.kind, e.size) for e in listed] == [("a.txt", "file", 1), ("b", "dir", None)]
    assert storage.listdir(str(tmp_path / "nope")) == []
    storage.remove(str(tmp_path / "b"))
    storage.remove(str(tmp_path / "nope"))  # absent: nothing to do
    assert [e.name for e in storage.listdir(str(tmp_path))] == ["a.txt"]
    assert storage.join("s3://bucket/runs", "x", "metrics.json") == "s3://bucket/runs/x/metrics.json"
    assert storage.parent("s3://bucket/runs/x/") == "s3://bucket/runs"
    assert storage.absolute("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.absolute("runs") == os.path.abspath("runs") and storage.name("s3://b/runs/x/") == "x"


def test_something_that_is_neither_file_nor_folder_still_exists():
    assert storage.kind(*storage.filesystem("/dev/null")) == "other"
    assert storage.exists("/dev/null") and not storage.is_file("/dev/null")


def test_a_folder_that_cannot_be_written_is_named_with_its_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"--output: cannot write to .*file/out"):
        storage.check_writable(str(blocker / "out"), "--output")
