"""Find and read tabular data (CSV or Parquet) from any pyarrow filesystem.

    python -m app train --config configs/quickstart.yaml     # data.train: data/penguins.csv

A source is a file, a folder of files, or a glob, on local disk or behind a URI
(`s3://`, `gs://`, ...). The format comes from the file extension. Checks here are
cheap (listing, sizes, the first file's header) so that bad input fails before any
Ray work starts.
"""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app import storage
from app.errors import UserError, causes

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """Resolved input: one filesystem, the files on it, their shared format."""

    uri: str
    key: str  # config key or flag it came from, for messages
    filesystem: storage.FileSystem
    paths: tuple[str, ...]
    format: str


@dataclass
class Inputs:
    """What the cheap checks learned about a run's sources (app.data.prepare.inspect_sources)."""

    train: Source
    test: Source | None
    kinds: dict[str, str]  # feature -> numeric | categorical
    input_types: dict[str, str]  # feature -> the Arrow type it is read as
    column_types: dict[str, pa.DataType]  # CSV read types
    label_type: str  # Arrow type of the label in the first file


def _format_of(path: str) -> str | None:
    return FORMATS.get(posixpath.splitext(path)[1].lower())


def _visible(path: str) -> bool:
    return not posixpath.basename(path).startswith((".", "_"))


def resolve(uri: str, key: str) -> Source:
    """List the data files behind `uri`; refuse missing, empty or mixed-format input."""
    fs, path = storage.filesystem(uri)
    if _GLOB_CHARS & set(path):
        base = path
        while _GLOB_CHARS & set(base):
            base = posixpath.dirname(base)
        found = _list(fs, base, uri, key)
        # fnmatch's "*" also crosses "/": match only files as deep as the pattern
        depth = path.count("/")
        found = [e for e in found if e.path.count("/") == depth and fnmatch.fnmatch(e.path, path)]
    else:
        entry = storage.stat(fs, path)
        if entry is None:
            raise UserError(f"{key}: {uri} does not exist")
        found = _list(fs, path, uri, key) if entry.is_dir else [entry]

    files = [e for e in found if e.is_file and _visible(e.path)]
    data_files = [i for i in files if _format_of(i.path)]
    if not data_files:
        if len(files) == 1:
            raise UserError(f"{key}: {uri} is not a .csv or .parquet file")
        raise UserError(f"{key}: no .csv or .parquet files found at {uri}")
    formats = {_format_of(i.path) for i in data_files}
    if len(formats) > 1:
        raise UserError(f"{key}: {uri} mixes CSV and Parquet files; use one format")
    for i in data_files:
        if i.size == 0:
            raise UserError(f"{key}: {i.path} is empty")
    return Source(uri, key, fs, tuple(i.path for i in data_files), formats.pop())


def _list(fs: storage.FileSystem, base: str, uri: str, key: str) -> list[storage.Entry]:
    try:
        return storage.entries(fs, base, recursive=True)
    except OSError as e:
        raise UserError(f"{key}: cannot list {uri}: {e}") from None


def csv_convert_options(column_types: dict[str, pa.DataType] | None = None) -> pacsv.ConvertOptions:
    # "NA", "" and friends mean missing in text columns too, not the literal string "NA".
    return pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types or {})


def read_schema(source: Source) -> pa.Schema:
    """Column names and types, from the first file only."""
    path = source.paths[0]
    try:
        if source.format == "parquet":
            return pq.read_schema(path, filesystem=source.filesystem)
        with source.filesystem.open_input_stream(path) as f:
            reader = pacsv.open_csv(f, convert_options=csv_convert_options())
            return reader.schema
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{source.key}: cannot read {path}: {_one_line(e)}") from None


def column_types(kinds: dict[str, str], label: str, label_type: pa.DataType) -> dict[str, pa.DataType]:
    """The Arrow type each column is read as from CSV: numeric features as float64, the rest
    as text, the label as its own kind.

    pyarrow infers CSV types from the first block of each file, so without this a column
    that is empty or whole-numbered early in a file and holds decimals later fails to parse
    mid-file, and different files could disagree.
    """
    types = {name: pa.float64() if kind == "numeric" else pa.string() for name, kind in kinds.items()}
    if pa.types.is_integer(label_type):
        types[label] = pa.int64()
    elif pa.types.is_floating(label_type) or pa.types.is_decimal(label_type):
        types[label] = pa.float64()
    elif not pa.types.is_boolean(label_type):
        types[label] = pa.string()
    return types


def read_dataset(source: Source, column_types: dict[str, pa.DataType] | None = None,
                 concurrency: int | None = None):
    """A lazy Ray Dataset over the source's files; `concurrency`: most read tasks at once
    (a map with the same limit fuses into the read)."""
    import ray.data

    paths = list(source.paths)
    # One read task and one block per file (larger outputs are still split at Ray Data's
    # block size limit). Maps fused into the read then run once per file, on as many CPUs
    # as there are files: Ray Data's default cuts each file into many small blocks, and
    # per-block overhead then costs more than the work on them.
    blocks = len(paths)
    if source.format == "parquet":
        # Ray Data's newer Parquet reader (datasource V2, the default in 2.60) packs files
        # into read units of 128 MiB, so a dataset smaller than that is read, and with the
        # maps fused into the read also preprocessed and scored, by one task on one CPU.
        context = ray.data.DataContext.get_current()
        v2, context.use_datasource_v2 = context.use_datasource_v2, False
        try:
            return ray.data.read_parquet(paths, filesystem=source.filesystem, override_num_blocks=blocks,
                                         concurrency=concurrency)
        finally:
            context.use_datasource_v2 = v2
    return ray.data.read_csv(
        paths, filesystem=source.filesystem, convert_options=csv_convert_options(column_types),
        override_num_blocks=blocks, concurrency=concurrency,
    )


def read_table(source: Source, column_types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """The whole source as one Arrow table, in file order, without Ray (small data, tests)."""
    tables = []
    for path in source.paths:
        try:
            if source.format == "parquet":
                tables.append(pq.read_table(path, filesystem=source.filesystem))
            else:
                with source.filesystem.open_input_stream(path) as f:
                    tables.append(pacsv.read_csv(f, convert_options=csv_convert_options(column_types)))
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{source.key}: cannot read {path}: {_one_line(e)}") from None
    return pa.concat_tables(tables, promote_options="permissive")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]


def read_step(step, source: Source):
    """Run a Ray Data step; a file that cannot be parsed becomes a UserError naming it."""
    try:
        return step()
    except Exception as e:
        cause = next((c for c in causes(e) if isinstance(c, (pa.ArrowInvalid, UnicodeDecodeError))), None)
        if cause is None:
            raise
        text = " ".join(str(cause).split())[:400]
        raise UserError(f"{source.key}: cannot read {source.uri}: {text}") from None
