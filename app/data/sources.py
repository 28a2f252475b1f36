"""Find and read tabular data (CSV or Parquet) from any pyarrow filesystem.

    python -m app train --config configs/quickstart.yaml     # data.train: data/penguins.csv

A source is a file, a folder of files, or a glob, on local disk or behind a URI
(`s3://`, `gs://`, ...). The format comes from the file extension. Checks here are
cheap (listing, sizes, the first file's header) so that bad input fails before any
Ray work starts.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import pickle
import posixpath
import re
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app import storage
from app.data.transform import BadValue, not_a_number
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
    sizes: tuple[int, ...] = ()  # bytes of each file, as listed (empty: not known)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def per_file(self) -> dict[str, Source]:
        """Each file's own Source (what a read task of it needs: not every other path)."""
        sizes = self.sizes or (0,) * len(self.paths)
        return {p: Source(self.uri, self.key, self.filesystem, (p,), self.format, (n,) if self.sizes else ())
                for p, n in zip(self.paths, sizes)}

    def __reduce__(self):
        # Read tasks receive their Source pickled. A pyarrow S3 filesystem unpickled before
        # pyarrow.fs is imported crashes its process at exit (Ray Data's readers wrap it for
        # that); here the filesystem is unpickled by a function of this module, after its imports.
        return _unpickle_source, (pickle.dumps(self.filesystem), self.uri, self.key, self.paths, self.format,
                                  self.sizes)


def _unpickle_source(filesystem: bytes, uri: str, key: str, paths: tuple[str, ...], fmt: str,
                     sizes: tuple[int, ...]) -> Source:
    return Source(uri, key, pickle.loads(filesystem), paths, fmt, sizes)


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
    return Source(uri, key, fs, tuple(i.path for i in data_files), formats.pop(), tuple(i.size for i in data_files))


def _list(fs: storage.FileSystem, base: str, uri: str, key: str) -> list[storage.Entry]:
    try:
        return storage.entries(fs, base, recursive=True)
    except OSError as e:
        raise UserError(f"{key}: cannot list {uri}: {e}") from None


def csv_convert_options(column_types: dict[str, pa.DataType] | None = None,
                        include: list[str] | None = None) -> pacsv.ConvertOptions:
    # "NA", "" and friends mean missing in text columns too, not the literal string "NA".
    return pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types or {},
                                **({"include_columns": include} if include is not None else {}))


def csv_read_types(names: list[str], column_types: dict[str, pa.DataType] | None,
                   columns: tuple[str, ...] | None = None) -> tuple[dict[str, pa.DataType], list[str] | None]:
    """(The type of every column of a CSV file whose header is `names`: as `column_types`
    says, and text for the rest; the columns to parse: `columns` that the file has, or None
    for all). A column that the model does not read is passed through as it was written,
    never typed by a guess from the file's first block: a note or an id that is whole
    numbers early and text later would otherwise stop the read, and `01000` would become
    1000. A column not in `columns` is never parsed at all; the others keep the file's
    order."""
    types = {name: (column_types or {}).get(name, pa.string()) for name in names}
    return types, None if columns is None else [c for c in names if c in columns]  # in the file's order


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
    """The Arrow type each column that training reads is read as from CSV: numeric features
    as float64, categorical ones as text, the label as its own kind.

    pyarrow infers CSV types from the first block of each file, so without this a column
    that is empty or whole-numbered early in a file and holds decimals later fails to parse
    mid-file, and different files could disagree.
    """
    types = {name: pa.float64() if kind == "numeric" else pa.string() for name, kind in kinds.items()}
    if pa.types.is_integer(label_type):
        types[label] = pa.int64()
    elif pa.types.is_floating(label_type) or pa.types.is_decimal(label_type):
        types[label] = pa.float64()
    elif pa.types.is_boolean(label_type):
        types[label] = pa.bool_()
    else:
        types[label] = pa.string()
    return types


# ---------------------------------------------------------------- reading in pieces

CSV_BLOCK_BYTES = 1 << 20  # pyarrow's default CSV block: the one that CSV column types are inferred from
PIECES = 32  # pieces of a source (when its files are big enough): 2 per CPU on 16 CPUs
MIN_PIECE_BYTES = 8 << 20  # a task per piece costs milliseconds; below this, that adds up
MAX_PIECE_BYTES = 256 << 20  # bounds a task's memory
STREAM_BLOCK_BYTES = 64 << 20  # a whole file streamed by `read_dataset`: its blocks' size


class ReadWhole(Exception):
    """A CSV file cut into byte ranges has to be read whole: a cut fell inside a quoted
    value that spans lines, or a piece did not parse on its own (the whole read then says
    why, naming the column). `prepare` starts over with the file whole."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path

    def __str__(self) -> str:
        return f"{self.path} cannot be read in byte ranges"


@dataclass(frozen=True)
class Piece:
    """What one read task reads: a whole file, some row groups of a Parquet file (and only
    rows [a, b) of them), or the lines of a CSV file that start in bytes [start, end)."""

    path: str
    row_groups: tuple[int, ...] | None = None  # Parquet: None means the whole file
    rows: tuple[int, int] | None = None  # Parquet: rows [a, b) of the row groups read
    start: int = 0  # CSV: None as end means the whole file
    end: int | None = None
    csv_schema: pa.Schema | None = None  # CSV cut into ranges: each column's type, as a whole read infers it


def plan_pieces(source: Source, column_types: dict[str, pa.DataType] | None, piece_bytes: int,
                cut_csv: bool = True, whole: frozenset[str] = frozenset()) -> list[Piece]:
    """The pieces of `source`, in file and row order: a file up to `piece_bytes` is one
    piece; a larger one is cut into about size / piece_bytes pieces, so that one big file
    is read (and, by the maps fused into the read, processed) on several CPUs.

    Parquet files are cut at row groups, and a row group larger than a piece into row
    ranges (each of those pieces decodes the whole row group). A CSV file is cut into byte
    ranges at line starts (with `cut_csv`, unless its first block has no line feed), each
    piece parsed with the column types that its first block gives a whole read; whoever
    reads them checks the cuts with `check_cuts`. Paths in `whole` are read whole. Only
    the files that are cut are opened here (a Parquet footer, a CSV file's first block).
    """
    sizes = source.sizes or (0,) * len(source.paths)
    big = [(p, s) for p, s in zip(source.paths, sizes) if s > piece_bytes and p not in whole
           and (source.format == "parquet" or cut_csv)]
    cut_into = {}
    if big:
        with ThreadPoolExecutor(max_workers=min(16, len(big))) as pool:
            cut = _parquet_pieces if source.format == "parquet" else _csv_pieces
            found = pool.map(lambda ps: cut(source, ps[0], ps[1], math.ceil(ps[1] / piece_bytes), column_types), big)
            cut_into = dict(zip((p for p, _ in big), found))
    return [piece for path in source.paths for piece in cut_into.get(path, [Piece(path)])]


def piece_bytes(source: Source) -> int:
    """About PIECES pieces of the source, within [MIN, MAX]_PIECE_BYTES. From the files alone,
    not from the cluster: the pieces, and so the summaries merged into the fitted
    preprocessing, are the same on a laptop and on a cluster."""
    return int(min(max(source.total_bytes / PIECES, MIN_PIECE_BYTES), MAX_PIECE_BYTES))


def _parquet_pieces(source: Source, path: str, size: int, n: int, column_types) -> list[Piece]:
    try:
        meta = pq.read_metadata(path, filesystem=source.filesystem)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{source.key}: cannot read {path}: {_one_line(e)}") from None
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    total = sum(rows)
    if total == 0:
        return [Piece(path)]
    if len(rows) >= n:  # runs of row groups, each run about total / n rows
        runs: dict[int, list[int]] = {}
        for i, first_row in enumerate(itertools.accumulate([0, *rows[:-1]])):
            runs.setdefault(first_row * n // total, []).append(i)
        return [Piece(path, row_groups=tuple(groups)) for groups in runs.values()]
    pieces = []
    for i, r in enumerate(rows):
        parts = max(1, round(n * r / total))
        pieces += [Piece(path, row_groups=(i,), rows=(r * k // parts, r * (k + 1) // parts)) for k in range(parts)]
    return pieces


def _csv_pieces(source: Source, path: str, size: int, n: int, column_types) -> list[Piece]:
    try:
        with source.filesystem.open_input_file(path) as f:
            head = f.read(CSV_BLOCK_BYTES)
        head = head[:head.rfind(b"\n") + 1]  # the lines of the first block, as a streaming read parses it
        names = pacsv.open_csv(pa.BufferReader(head), read_options=pacsv.ReadOptions(use_threads=False)).schema.names
        schema = pacsv.open_csv(pa.BufferReader(head), read_options=pacsv.ReadOptions(use_threads=False),
                                convert_options=csv_convert_options(csv_read_types(names, column_types)[0])).schema
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError):
        return [Piece(path)]  # the whole read says what is wrong, naming the column
    if not head:
        return [Piece(path)]
    bounds = [size * k // n for k in range(n + 1)]
    return [Piece(path, start=a, end=b, csv_schema=schema) for a, b in itertools.pairwise(bounds)]


def read_piece(source: Source, piece: Piece, column_types: dict[str, pa.DataType] | None = None,
               columns: tuple[str, ...] | None = None) -> tuple[pa.Table, int | None]:
    """(One piece as an Arrow table; for a CSV byte range, the number of quote characters
    in it, for `check_cuts`). Read as Ray Data's readers read the whole file (CSV: pyarrow's
    streaming reader, the columns not in `column_types` as text (`csv_read_types`); Parquet:
    the file's own types), plus a text column for each `key=value` folder in its path (hive
    partitioning, as Ray Data adds them). `columns`: only these are read (None: all). A file
    that cannot be parsed is a UserError naming it and, where pyarrow says, the column."""
    quotes = None
    try:
        if source.format == "parquet":
            table = _read_parquet(source, piece, columns)
        elif piece.csv_schema is not None:
            table, quotes = _read_csv_range(source, piece, columns)
        else:
            convert = _csv_convert(source, piece.path, column_types, columns)
            with source.filesystem.open_input_stream(piece.path) as f:
                table = pacsv.open_csv(f, read_options=pacsv.ReadOptions(use_threads=False),
                                       convert_options=convert).read_all()
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        raise _unreadable(source, piece.path, e) from None
    return _with_partitions(table, piece.path, columns), quotes


def stream_piece(source: Source, piece: Piece, column_types: dict[str, pa.DataType] | None = None,
                 columns: tuple[str, ...] | None = None) -> Iterator[pa.Table]:
    """`read_piece`'s table in parts of about STREAM_BLOCK_BYTES: a whole file is streamed,
    never held at once (the blocks of `read_dataset`)."""
    if piece.row_groups is not None or piece.csv_schema is not None:
        yield read_piece(source, piece, column_types, columns)[0]
        return
    try:
        convert = _csv_convert(source, piece.path, column_types, columns) if source.format == "csv" else None
        with source.filesystem.open_input_file(piece.path) as f:
            if source.format == "parquet":
                pf = pq.ParquetFile(f)
                batches = pf.iter_batches(batch_size=64 * 1024, columns=_present(pf.schema_arrow, columns))
                schema = _selected(pf.schema_arrow, columns)
            else:
                reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(use_threads=False), convert_options=convert)
                schema, batches = reader.schema, reader
            pending, size, yielded = [], 0, False
            for batch in batches:
                pending.append(batch)
                size += batch.nbytes
                if size >= STREAM_BLOCK_BYTES:
                    yield _with_partitions(pa.Table.from_batches(pending, schema), piece.path, columns)
                    pending, size, yielded = [], 0, True
            if pending or not yielded:
                yield _with_partitions(pa.Table.from_batches(pending, schema), piece.path, columns)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        raise _unreadable(source, piece.path, e) from None


def _csv_convert(source: Source, path: str, column_types: dict[str, pa.DataType] | None,
                 columns: tuple[str, ...] | None) -> pacsv.ConvertOptions:
    """How to convert the file at `path` (`csv_read_types`), from its header."""
    return csv_convert_options(*csv_read_types(_file_schema(source, path, _HEADER_BYTES).names, column_types, columns))


def _present(schema: pa.Schema, columns: tuple[str, ...] | None) -> list[str] | None:
    """`columns` that the file has, in the file's order (the split hashes columns in order)."""
    return None if columns is None else [c for c in schema.names if c in columns]


def _selected(schema: pa.Schema, columns: tuple[str, ...] | None) -> pa.Schema:
    return schema if columns is None else pa.schema([schema.field(c) for c in _present(schema, columns)])


def _read_parquet(source: Source, piece: Piece, columns: tuple[str, ...] | None = None) -> pa.Table:
    with source.filesystem.open_input_file(piece.path) as f:
        pf = pq.ParquetFile(f)
        present = _present(pf.schema_arrow, columns)
        if piece.row_groups is None:
            return pf.read(columns=present)
        table = pf.read_row_groups(list(piece.row_groups), columns=present)
    return table if piece.rows is None else table.slice(piece.rows[0], piece.rows[1] - piece.rows[0])


def _read_csv_range(source: Source, piece: Piece, columns: tuple[str, ...] | None = None) -> tuple[pa.Table, int]:
    """The lines that start in [piece.start, piece.end) (each piece finds the same line
    starts, the byte after a line feed, so the pieces of a file hold each line once), and
    the quote characters among them."""
    with source.filesystem.open_input_file(piece.path) as f:
        size = f.size()
        start, end = _line_start(f, piece.start, size), _line_start(f, piece.end, size)
        data = f.read_at(end - start, start) if end > start else b""
    schema = piece.csv_schema
    if not data.strip():
        return _selected(schema, columns).empty_table(), 0
    read_options = pacsv.ReadOptions(use_threads=False, column_names=None if start == 0 else schema.names)
    convert = csv_convert_options(*csv_read_types(schema.names, dict(zip(schema.names, schema.types)), columns))
    try:
        table = pacsv.open_csv(pa.BufferReader(data), read_options=read_options, convert_options=convert).read_all()
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise ReadWhole(piece.path) from None
    if any(pc.any(pc.match_substring_regex(table.column(i), "[\r\n]")).as_py()
           for i, t in enumerate(table.schema.types) if pa.types.is_string(t)):
        # A line break inside a value: the piece may hold a cut inside a quoted value that
        # the quote count missed (a stray quote elsewhere evens it out). Read it whole.
        raise ReadWhole(piece.path)
    return table, data.count(b'"')


def check_cuts(pieces: list[Piece], quotes: list[int | None]) -> None:
    """ReadWhole for a CSV file cut inside a quoted value. Before a cut outside quoted
    values, the file's quote characters come in pairs (opening and closing quotes, quotes
    doubled inside a value); an odd count means the cut lies inside a value, whose line
    breaks belong to it. (A quote inside an unquoted value, which CSV writers do not
    write, makes a count odd too: that file is then read whole, which is slower but right.)"""
    seen: dict[str, int] = {}
    for piece, count in zip(pieces, quotes):
        if piece.csv_schema is None:
            continue
        if seen.get(piece.path, 0) % 2:
            raise ReadWhole(piece.path)
        seen[piece.path] = seen.get(piece.path, 0) + count


def _line_start(f, position: int, size: int) -> int:
    """The first line start at or after `position` (0 and `size` are line starts)."""
    if position <= 0 or position >= size:
        return min(max(position, 0), size)
    at = position - 1
    while at < size:
        chunk = f.read_at(min(1 << 16, size - at), at)
        found = chunk.find(b"\n")
        if found >= 0:
            return at + found + 1
        at += len(chunk)
    return size


def _with_partitions(table: pa.Table, path: str, columns: tuple[str, ...] | None = None) -> pa.Table:
    """`key=value` folders of `path` as text columns that the file does not have itself
    (of `columns`, if given)."""
    folders = [d.split("=") for d in posixpath.dirname(path).split("/") if d and d.count("=") == 1]
    for key, value in dict(folders).items():
        if key not in table.column_names and (columns is None or key in columns):
            table = table.append_column(key, pa.array([urllib.parse.unquote(value)] * table.num_rows, pa.string()))
    return table


# Where each row comes from, for `read_dataset(..., origin=True)`: its piece's index, and its
# index within that piece (int64: Ray Data may cut a block, and each cut keeps its rows').
PIECE_COLUMN, ROW_COLUMN = "__app_piece", "__app_row"
# Columns that the app adds to rows: an input column of one of these names is refused.
RESERVED_COLUMNS = frozenset([PIECE_COLUMN, ROW_COLUMN, "__split__"])


def read_dataset(source: Source, column_types: dict[str, pa.DataType] | None = None,
                 concurrency: int | None = None, *, origin: bool = False, pieces: list[Piece] | None = None,
                 columns: tuple[str, ...] | None = None):
    """A lazy Ray Dataset over the source's files, one read task per piece (`plan_pieces`:
    a big Parquet file is read by several tasks; a CSV file by one, since only `prepare`
    can start over when a cut turns out to lie inside a quoted value); `concurrency`: most read tasks
    at once (a map with the same limit fuses into the read). `origin`: each row also gets
    PIECE_COLUMN and ROW_COLUMN. `pieces`: `read_plan`'s, if the caller made it already.
    `columns`: only these are read (None: all)."""
    import ray.data
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    pieces = pieces or read_plan(source, column_types)
    files = source.per_file()

    class Pieces(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return source.total_bytes or None

        def get_name(self) -> str:  # the operator "ReadCSV" or "ReadParquet", as Ray Data's readers name it
            return "CSV" if source.format == "csv" else "Parquet"

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            read = with_origin if origin else (lambda _, s, p: stream_piece(s, p, column_types, columns))
            return [ReadTask(lambda i=i, p=p, s=files[p.path]: read(i, s, p),
                             BlockMetadata(num_rows=None, size_bytes=None, input_files=[p.path], exec_stats=None),
                             per_task_row_limit=per_task_row_limit)
                    for i, p in enumerate(pieces)]

    def with_origin(index: int, s: Source, p: Piece) -> Iterator[pa.Table]:
        row = 0
        for table in stream_piece(s, p, column_types, columns):
            n = table.num_rows
            yield table.append_column(PIECE_COLUMN, pa.array(np.full(n, index, np.int64))) \
                .append_column(ROW_COLUMN, pa.array(np.arange(row, row + n, dtype=np.int64)))
            row += n

    # One block per piece (larger outputs are still split at Ray Data's block size limit):
    # Ray Data's own readers cut each file into many small blocks, and per-block overhead
    # then costs more than the work on them.
    return ray.data.read_datasource(Pieces(), override_num_blocks=len(pieces), concurrency=concurrency)


def read_plan(source: Source, column_types: dict[str, pa.DataType] | None = None) -> list[Piece]:
    """The pieces `read_dataset` reads, one task each, in order."""
    return plan_pieces(source, column_types, piece_bytes(source), cut_csv=False)


def read_table(source: Source, column_types: dict[str, pa.DataType] | None = None,
               columns: tuple[str, ...] | None = None) -> pa.Table:
    """The whole source as one Arrow table, in file order, without Ray (small data, tests),
    read as `read_dataset` reads it."""
    tables = [read_piece(source, Piece(path), column_types, columns)[0] for path in source.paths]
    return pa.concat_tables(tables, promote_options="permissive")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]


_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
_NOT_A_NUMBER = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to "
                           r"(?:double|float|u?int\d+): invalid value '(.*)'$", re.S)


def _unreadable(source: Source, path: str, e: BaseException) -> UserError:
    """The UserError for a file that pyarrow cannot read: it names the file and, for CSV,
    the column; a word in a numeric column is said as `transform.not_a_number` says it for
    every other input (Parquet, JSON, a DataFrame)."""
    text = _one_line(e)
    if source.format == "csv":
        match = _NOT_A_NUMBER.search(str(e))
        names = _names_or_none(source, path) if match else None
        if match and int(match.group(1)) < len(names or ()):
            return UserError(f"{source.key}: cannot read {path}: "
                             f"{not_a_number(names[int(match.group(1))], match.group(2))}")
        text = _name_csv_column(source, path, text)
    return UserError(f"{source.key}: cannot read {path}: {text}")


def _names_or_none(source: Source, path: str) -> list[str] | None:
    try:
        return _file_schema(source, path, _HEADER_BYTES).names
    except UserError:
        return None


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


def read_step(step, source: Source):
    """Run a step that reads `source` (here or in Ray tasks); a file that cannot be parsed
    becomes one UserError naming it (and, where pyarrow says, the column), without the
    Ray task's traceback around it."""
    try:
        return step()
    except Exception as e:
        if any(isinstance(cause, ReadWhole) for cause in causes(e)):
            raise  # not an error: `prepare` reads that file whole
        for cause in causes(e):
            if type(cause) is UserError:
                raise UserError(str(cause)) from None
            if type(cause) is BadValue:  # (not Ray's RayTaskError that is one too: its text is a traceback)
                said = str(cause.args[0]).split("\n", 1)[0]  # (the rest: retry advice that Ray Data appends)
                raise UserError(f"{source.key} {source.uri}: {said}") from None
            if isinstance(cause, (pa.ArrowInvalid, UnicodeDecodeError)):
                text = " ".join(str(cause).split())[:400]
                raise UserError(f"{source.key}: cannot read {source.uri}: {text}") from None
        raise
