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
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
    """Column names and types, from the first file only; a column name used twice is refused."""
    return _file_schema(source, source.paths[0])


def _file_schema(source: Source, path: str, block_size: int | None = None) -> pa.Schema:
    """One file's schema: a Parquet footer, or a CSV header and the types inferred from the
    first block (`block_size` bytes; pyarrow's default when None)."""
    try:
        if source.format == "parquet":
            schema = pq.read_schema(path, filesystem=source.filesystem)
        else:
            options = pacsv.ReadOptions(use_threads=False, **({"block_size": block_size} if block_size else {}))
            with source.filesystem.open_input_stream(path) as f:
                schema = pacsv.open_csv(f, read_options=options, convert_options=csv_convert_options()).schema
    except (pa.ArrowInvalid, OSError) as e:
        if block_size:  # a header longer than the small block: read it as the first file is read
            return _file_schema(source, path)
        raise UserError(f"{source.key}: cannot read {path}: {_one_line(e)}") from None
    counts = Counter(schema.names)
    twice = next((name for name in schema.names if counts[name] > 1), None)
    if twice is not None:
        # pandas and Arrow would keep one of them, or fail later without naming the file
        raise UserError(f"{source.key}: {path} has {counts[twice]} columns named {twice!r}; "
                        f"give each column its own name")
    return schema


_HEADER_BYTES = 1 << 16  # how much of each later CSV file check_files reads: the header, usually


def check_files(source: Source, columns: list[str],
                expected: dict[str, str] | None = None) -> dict[str, pa.DataType]:
    """Every file of `source` has each of `columns`, once, and (Parquet) of the same kind of
    type (number, text, boolean, ...) in every file; `expected`: column -> the kind it must
    have (the train source's, for a test source). Returns each column's type in the first
    file where it is not all empty (null).

    Without this, a part that stores a numeric column as text would be read as numbers with
    its words silently made missing, and a part without a column fails in a Ray task. Only
    headers are read (Parquet footers; CSV: the first 64 KiB), several files at once.
    """
    paths = source.paths
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        schemas = list(pool.map(lambda p: _file_schema(source, p, _HEADER_BYTES), paths))
    seen: dict[str, tuple[str, pa.DataType]] = {}  # column -> the first file with a non-null type, that type
    for path, schema in zip(paths, schemas):
        for name in columns:
            if name not in schema.names:
                raise UserError(f"{source.key}: {path} has no column {name!r} (the first file, {paths[0]}, has it)")
            dtype = schema.field(name).type
            if pa.types.is_null(dtype):
                continue  # all empty in this file: fits any type
            if name not in seen:
                seen[name] = (path, dtype)
            if source.format != "parquet":
                continue  # CSV is read with one type per column in every file (column_types)
            if expected and name in expected and type_kind(dtype) != expected[name]:
                raise UserError(f"{source.key}: column {name!r} is {dtype} in {path}, but {expected[name]} "
                                f"in data.train; store it as {expected[name]}")
            if type_kind(seen[name][1]) != type_kind(dtype):
                raise UserError(f"{source.key}: column {name!r} is {seen[name][1]} in {seen[name][0]} but {dtype} "
                                f"in {path}; store it with one type in every file")
    return {name: seen[name][1] if name in seen else pa.null() for name in columns}


def type_kind(dtype: pa.DataType) -> str:
    """What the data step makes of an Arrow type: number, text, boolean or the type itself."""
    if pa.types.is_dictionary(dtype):
        return type_kind(dtype.value_type)
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return "text"
    if pa.types.is_boolean(dtype):
        return "boolean"
    return str(dtype)


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
            raise UserError(f"{source.key}: cannot read {path}: {_name_csv_column(source, path, _one_line(e))}") \
                from None
    return pa.concat_tables(tables, promote_options="permissive")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]


_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
# Ray Data's read task turns pyarrow's parse error into this, without the error itself.
_RAY_CSV_FAILURE = re.compile(r"Failed to read CSV file: (.+?)\. Please check")


def _name_csv_column(source: Source, path: str, text: str) -> str:
    """pyarrow numbers the CSV column of a parse error ("In CSV column #3"); add its name."""
    match = _CSV_COLUMN.search(text)
    if match is None:
        return text
    try:
        names = _file_schema(source, path, _HEADER_BYTES).names
    except UserError:
        return text
    i = int(match.group(1))
    return text if i >= len(names) else f"{text[:match.end()]} ({names[i]!r}){text[match.end():]}"


def _csv_error(source: Source, path: str, column_types: dict[str, pa.DataType] | None) -> str | None:
    """Why `path` cannot be read with `column_types`, found by streaming it through pyarrow
    here (the error path only; memory: one block); None if it reads."""
    try:
        with source.filesystem.open_input_stream(path) as f:
            for _ in pacsv.open_csv(f, convert_options=csv_convert_options(column_types)):
                pass
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        return _name_csv_column(source, path, _one_line(e))
    return None


def read_step(step, source: Source, column_types: dict[str, pa.DataType] | None = None):
    """Run a Ray Data step; a file that cannot be parsed (with `column_types`, for CSV)
    becomes a UserError naming it and, where pyarrow says, the column."""
    try:
        return step()
    except Exception as e:
        for cause in causes(e):
            if isinstance(cause, (pa.ArrowInvalid, UnicodeDecodeError)):
                text = " ".join(str(cause).split())[:400]
                raise UserError(f"{source.key}: cannot read {source.uri}: {text}") from None
            failed = _RAY_CSV_FAILURE.search(str(cause)) if isinstance(cause, ValueError) else None
            if failed and failed.group(1) in source.paths:
                path = failed.group(1)
                why = _csv_error(source, path, column_types) or "not a readable CSV file"
                raise UserError(f"{source.key}: cannot read {path}: {why}") from None
        raise
