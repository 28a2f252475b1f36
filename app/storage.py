"""The one place that knows filesystems: local paths and pyarrow URIs (`s3://`, `gs://`, ...).

    fs, path = storage.filesystem("s3://bucket/runs/quickstart")
    storage.write_json(storage.join(run, "metrics.json"), metrics)    # atomic
    storage.read_json(storage.join(run, "metrics.json"))              # None if absent

Every other module goes through these functions; none imports `pyarrow.fs`. A location is
a URI string (a local path, absolute or relative, or `scheme://...`); code that already holds
an open filesystem (Ray Data readers, Ray Train's storage context) uses the `(fs, path)`
forms at the bottom.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from app.errors import UserError

FileSystem = pafs.FileSystem


@dataclass(frozen=True)
class Entry:
    """One file, folder or other thing (a device, a pipe) on a filesystem."""

    path: str  # on its filesystem
    name: str
    kind: str  # "file" | "dir" | "other"
    size: int | None  # bytes, for a file

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


# ---------------------------------------------------------------- locations


def is_uri(location: str) -> bool:
    return "://" in location


def filesystem(location: str) -> tuple[FileSystem, str]:
    """(filesystem, path on it) of a local path or a pyarrow URI."""
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise UserError(f"cannot open {location}: {e}") from None
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def absolute(location: str) -> str:
    """An absolute local path, or the URI without a trailing slash (Ray needs absolute paths)."""
    if is_uri(location):
        return location.rstrip("/")
    return os.path.abspath(os.path.expanduser(location))


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def parent(location: str) -> str:
    """The folder holding `location`."""
    if is_uri(location):
        return posixpath.dirname(location.rstrip("/"))
    return os.path.dirname(os.path.abspath(os.path.expanduser(location)))


def name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def is_local(fs: FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


# ---------------------------------------------------------------- what is there


def exists(location: str) -> bool:
    return kind(*filesystem(location)) is not None


def is_dir(location: str) -> bool:
    return kind(*filesystem(location)) == "dir"


def is_file(location: str) -> bool:
    return kind(*filesystem(location)) == "file"


def listdir(location: str) -> list[Entry]:
    """The folder's direct entries, sorted by name; empty when it does not exist."""
    fs, path = filesystem(location)
    return entries(fs, path)


# ---------------------------------------------------------------- read and write


def read_bytes(location: str) -> bytes | None:
    """The file's content; None when there is no such file."""
    fs, path = filesystem(location)
    if kind(fs, path) != "file":
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str | None:
    data = read_bytes(location)
    return None if data is None else data.decode()


def read_json(location: str) -> Any:
    """The parsed file; None when there is no such file. Invalid JSON is a UserError."""
    data = read_bytes(location)
    if data is None:
        return None
    try:
        return json.loads(data)  # bytes: UTF-8 with or without a BOM, or UTF-16/32
    except ValueError as e:  # UnicodeDecodeError included
        raise UserError(f"{location} is not valid JSON ({e}); delete it or pass --fresh") from None


def write_bytes(location: str, data: bytes) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file under the
    final name (object stores publish an upload only once it is complete)."""
    fs, path = filesystem(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with staged(fs, path) as tmp:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def write_json(location: str, payload: Any) -> None:
    write_text(location, json.dumps(payload, indent=1))


def remove(location: str) -> None:
    """Delete a file or a folder tree; nothing when absent."""
    remove_path(*filesystem(location))


def check_writable(location: str, key: str) -> None:
    """Create the folder, then write and delete a probe file there; a UserError naming
    `key` (the config key or flag) if that fails."""
    fs, path = filesystem(location)
    probe = posixpath.join(path, f".write-probe-{uuid.uuid4().hex}")
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as e:
        raise UserError(f"{key}: cannot write to {location} ({' '.join(str(e).split())})") from None


# ---------------------------------------------------------------- what the app owns

OWNED = ".app-owned"  # in each folder the app creates (run, sweep, predictions, export)


def mark_owned(location: str, what: str) -> None:
    """Leave the marker that lets a later `--fresh` or `--overwrite` delete this folder."""
    mark_owned_path(*filesystem(location), what)


def mark_owned_path(fs: FileSystem, path: str, what: str) -> None:
    marker = posixpath.join(path, OWNED)
    if kind(fs, marker) != "file":
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(marker) as f:
            f.write(json.dumps({"written_by": "app", "what": what}).encode())


def check_replaceable(location: str, key: str) -> None:
    """A UserError naming `key` unless nothing is at `location`, or an empty folder, or a
    folder holding the app's marker: the app deletes only what it wrote."""
    fs, path = filesystem(location)
    found = kind(fs, path)
    if found is None or (found == "dir" and (kind(fs, posixpath.join(path, OWNED)) == "file"
                                             or not entries(fs, path))):
        return
    what = "a folder" if found == "dir" else "a file" if found == "file" else "something"
    raise UserError(f"{key} {location} is {what} this app did not write (it has no {OWNED} marker), and "
                    f"the app deletes only what it wrote: remove it yourself or choose another location")


def clear(location: str, *, keep: set[str]) -> None:
    """Delete what the folder holds, except the entries named in `keep`."""
    fs, path = filesystem(location)
    for entry in entries(fs, path):
        if entry.name not in keep:
            remove_path(fs, entry.path)


def staging_path(path: str, kind: str = "tmp") -> str:
    """A hidden name beside `path` that no other writer picks: `.<name>.<kind>-<id>`."""
    return f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{kind}-{uuid.uuid4().hex[:12]}"


@contextmanager
def staged(fs: FileSystem, final: str) -> Iterator[str]:
    """A staging name beside `final` for the caller to write its output to, then to move or
    publish under `final`; if the block fails, whatever was staged goes (except after a
    `PublishError`, whose message names the staging copy as the only complete output)."""
    staging = staging_path(final)
    try:
        yield staging
    except PublishError:
        raise
    except BaseException:
        try:
            remove_path(fs, staging)
        except OSError:
            pass  # the error that stopped the write is the one to report
        raise


def publish_dir(fs: FileSystem, staging: str, final: str, *, success: str | None = None) -> None:
    """Replace the folder `final` (if any, the app's own: see `check_replaceable`) by the
    complete folder `staging`, and write the empty file `success` (if named) into it last.

    A local folder is swapped by two renames; if the second fails, the old folder is moved
    back. An object store cannot rename a prefix, so there the old `success` file goes first
    (readers that wait for it never see old and new parts mixed), then the old parts (the
    marker stays, so a cut-short switch can be redone with --overwrite), then the new parts
    are copied over, and `success` comes last."""
    if is_local(fs):
        if success:
            with fs.open_output_stream(posixpath.join(staging, success)):
                pass
        old = None
        if kind(fs, final) is not None:
            old = staging_path(final, "old")
            fs.move(final, old)
        try:
            fs.move(staging, final)
        except BaseException:
            if old is not None:
                fs.move(old, final)  # the previous output back under its name
            raise
        if old is not None:
            remove_path(fs, old)
        return
    try:
        if success:
            remove_path(fs, posixpath.join(final, success))
        for entry in entries(fs, final):
            if entry.name != OWNED:
                remove_path(fs, entry.path)
        for entry in entries(fs, staging, recursive=True):
            if entry.is_file:
                fs.copy_file(entry.path, final + entry.path[len(staging):])
        if success:
            with fs.open_output_stream(posixpath.join(final, success)):
                pass
    except BaseException as e:
        # The old output is gone by now and the new one is whole only in `staging`: keep it.
        raise PublishError(f"replacing {final} failed ({e}); the complete new output is kept in {staging}") from e
    remove_path(fs, staging)


class PublishError(OSError):
    """A switch to a new output failed midway; its message names where the output is kept."""


# ---------------------------------------------------------------- outputs claimed while written

CLAIM_SETTLE_S = 1.0  # on an object store: how long a claim waits for a rival's write before reading back


def fingerprint(fs: FileSystem, path: str) -> tuple | None:
    """What is at `path`, to tell later whether it is still the same thing: None when nothing
    is there; else its kind, size and modification time and, for a folder, those of each of
    its entries (an object store's folder has no time of its own)."""
    def key(info: pafs.FileInfo) -> tuple:
        return info.base_name, info.type, info.size, info.mtime_ns

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    inside = fs.get_file_info(pafs.FileSelector(path)) if info.type == pafs.FileType.Directory else []
    return key(info), sorted(map(key, inside))


def changed_since(fs: FileSystem, path: str, before: tuple | None, location: str, key: str, staging: str) -> None:
    """Before a new output replaces `path`: a `KeptOutput` error (the staging copy is kept,
    and named) when what is there is not what was there when the command started: something
    another writer put there meanwhile is neither replaced nor deleted, `--overwrite` or not.
    (What another writer does between this check and the switch, a moment later, is not seen.)"""
    now = fingerprint(fs, path)
    if now == before:
        return
    found = {"file": "a file", "dir": "a folder"}.get(kind(fs, path) or "", "something")
    what = (f"{found} appeared at {key} {location} while this command ran" if before is None else
            f"{key} {location} was changed while this command ran" if now is not None else
            f"{key} {location} was removed while this command ran")
    kept = join(parent(location), posixpath.basename(staging))
    raise KeptOutput(f"{what}; it was left as it is, and the new output is kept in {kept}: "
                     f"check both, then move or delete that copy yourself")


@contextmanager
def claimed(fs: FileSystem, path: str, location: str, key: str) -> Iterator[None]:
    """Claim the output `path` (its `location` and flag `key` name it in messages) for the
    block: a file `.<name>.claim` beside it that names this process. A second command that
    claims the same output meanwhile is refused; the claim goes when the block ends, failed
    or not. A claim whose process is gone (same host) is taken over.

    On a local disk the claim file appears whole and only where there was none (a hard link of
    a written file). An object store has no such operation: there the claim is written, then
    read back after `CLAIM_SETTLE_S`, and of two commands that wrote it within that time only
    the last goes on. Two commands that start further apart always see each other's claim; a
    claim left by a process on another host that died is not recognized as stale (the message
    says which file to delete)."""
    claim = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.claim"
    me = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    fs.create_dir(posixpath.dirname(path), recursive=True)
    for _ in range(2):  # once more after taking over a stale claim
        owner = _claim_owner(fs, claim)
        if owner is not None:
            if owner.get("host") != me["host"] or _alive(owner.get("pid")):
                who = (f" (pid {owner['pid']} on {owner.get('host')}, since {time.ctime(float(owner['since']))})"
                       if {"pid", "since"} <= set(owner) else "")
                raise UserError(f"{key} {location} is being written by another command{who}; wait for it to finish "
                                f"or choose another output (if no command is writing it, delete "
                                f"{join(parent(location), posixpath.basename(claim))})")
            remove_path(fs, claim)  # its process is gone
        if _create_claim(fs, claim, me):
            break
    else:
        raise UserError(f"{key} {location} was just claimed by another command; run one command per output")
    try:
        yield
    finally:
        if (_claim_owner(fs, claim) or {}).get("token") == me["token"]:
            remove_path(fs, claim)


def _create_claim(fs: FileSystem, claim: str, me: dict[str, Any]) -> bool:
    """Whether this process now holds the claim file (see `claimed`)."""
    data = json.dumps(me).encode()
    if is_local(fs):
        tmp = f"{claim}.{me['token']}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, claim)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    with fs.open_output_stream(claim) as f:
        f.write(data)
    time.sleep(CLAIM_SETTLE_S)  # a command racing for the same output writes within this window
    return (_claim_owner(fs, claim) or {}).get("token") == me["token"]


def _claim_owner(fs: FileSystem, claim: str) -> dict[str, Any] | None:
    """The claim file's owner record; None when there is none. One that cannot be read (being
    written) counts as held by someone."""
    try:
        with fs.open_input_stream(claim) as f:
            data = f.read()
    except OSError:
        return None if kind(fs, claim) is None else {}
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _alive(pid: Any) -> bool:
    """Whether the process `pid` of this host still runs (or cannot be told)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


class KeptOutput(PublishError, UserError):
    """A new output not switched in because its location changed meanwhile; its message names
    where it is kept. Bad input (exit 2), and `staged` keeps the staging copy."""


# ---------------------------------------------------------------- copies to and from this machine


def download(location: str, local_dir: str | Path) -> None:
    """Copy the folder at `location` into the local folder `local_dir`."""
    fs, path = filesystem(location)
    pafs.copy_files(path, str(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def upload_file(local_path: str | Path, fs: FileSystem, path: str) -> None:
    pafs.copy_files(str(local_path), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def upload_dir(local_dir: str | Path, fs: FileSystem, path: str) -> None:
    pafs.copy_files(str(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


# ---------------------------------------------------------------- on an open filesystem


def stat(fs: FileSystem, path: str) -> Entry | None:
    """The file or folder at `path`; None when nothing is there."""
    return _entry(fs.get_file_info(path))


def kind(fs: FileSystem, path: str) -> str | None:
    """"file", "dir", "other" (a device, a pipe), or None when nothing is there."""
    found = stat(fs, path)
    return None if found is None else found.kind


def entries(fs: FileSystem, path: str, recursive: bool = False) -> list[Entry]:
    """What the folder holds (everything below it with `recursive`), sorted by path."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    return sorted(filter(None, map(_entry, infos)), key=lambda e: e.path)


def _entry(info: pafs.FileInfo) -> Entry | None:
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.Directory:
        return Entry(info.path, info.base_name, "dir", None)
    if info.type == pafs.FileType.File:
        return Entry(info.path, info.base_name, "file", info.size)
    return Entry(info.path, info.base_name, "other", None)


def remove_path(fs: FileSystem, path: str) -> None:
    found = kind(fs, path)
    if found == "dir":
        fs.delete_dir(path)
    elif found == "file":
        fs.delete_file(path)
