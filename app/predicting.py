"""The `predict` command: a checkpoint applied to a whole dataset with Ray Data.

    python -m app predict --checkpoint runs/quickstart/checkpoint_epoch_0012 --input new.csv --output out.parquet

Everything that can be wrong with the input (checkpoint, files, columns, output path) is
checked on the driver before Ray starts. Each piece of input is read and scored by one
Ray task; a worker process loads the model once and reuses it for later pieces. A folder
output is written by those same tasks, block by block, in parts named by where their rows
come from (piece, then row), so the names sort in input order and no predicted row passes
through the driver (unless the folder is local and other nodes cannot reach it). A
single-file output has one writer, the driver, to which predictions stream back in input
order and are written as they come (the first ones held back only while a column empty in
the first file has no type yet, up to 64 MiB). Inputs larger than memory work either way.

The output is written complete beside its final name first (`.<name>.tmp-<id>`) and only
then takes that name, so a failed job leaves a previous output as it was. `--overwrite`
replaces a file, or a folder this app wrote (it holds `storage.OWNED`); any other folder
is refused, never deleted. The output is claimed while the command runs (`.<name>.claim`
beside it, `storage.claimed`): a second command writing the same output is refused at its
start, and something that appears at the output meanwhile, or changes there, is never
replaced: the new output then stays under its staging name, which the error names.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app import cluster, storage
from app.data import sources
from app.errors import UserError
from app.predictor import Predictor, predict_dataset, read_types

ROWS_PER_PART = 1_000_000  # Parquet part size when the output is a folder
SUCCESS_MARKER = "_SUCCESS"  # written last into an output folder on object storage


@dataclass
class Output:
    uri: str
    filesystem: storage.FileSystem
    path: str
    format: str | None  # "csv" | "parquet" for one file; None for a folder of Parquet parts
    before: tuple | None = None  # `storage.fingerprint` of what was there when checked: all it may replace


def check_output(uri: str, overwrite: bool) -> Output:
    fs, path = storage.filesystem(uri)
    fmt = sources.FORMATS.get(posixpath.splitext(path)[1].lower())
    before = storage.fingerprint(fs, path)
    found = storage.kind(fs, path)
    if found is not None and not overwrite:
        raise UserError(f"--output {uri} already exists; remove it or pass --overwrite")
    if fmt and found == "dir":
        raise UserError(f"--output {uri} is a folder; a .{fmt} output must be a file")
    if not fmt and found is not None:
        storage.check_replaceable(uri, "--output")  # a folder of parts replaces only the app's own
    parent = posixpath.dirname(path)
    if storage.is_local(fs) and storage.kind(fs, parent) == "file":
        raise UserError(f"--output {uri}: {parent} is a file, not a folder")
    return Output(uri, fs, path, fmt, before)


@contextmanager
def claimed_output(uri: str, overwrite: bool) -> Iterator[Output]:
    """`check_output`, with the output claimed for the block (`storage.claimed`) and checked
    again once claimed: what is there then is all that the final switch may replace."""
    check_output(uri, overwrite)  # refused before anything is created
    storage.check_writable(storage.parent(uri), "--output")
    fs, path = storage.filesystem(uri)
    with storage.claimed(fs, path, uri, "--output"):
        yield check_output(uri, overwrite)


def run_predict(checkpoint: str, predictor: Predictor, source: sources.Source, output: Output, *,
                batch_size: int, concurrency: int | None) -> int:
    """Score every input row and write the output; returns the number of rows written."""
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True
    concurrency = concurrency or default_concurrency()
    types = read_types(predictor.state)
    fs = output.filesystem

    def scored(**read):
        # The same task limit on every step: Ray Data then fuses reading a piece, scoring it
        # (and writing it) into one task, and rows never pass through the object store.
        ds = sources.read_dataset(source, types, concurrency, **read)
        return predict_dataset(checkpoint, ds, concurrency=concurrency, batch_size=batch_size)

    def write_folder(folder: str) -> int:
        if storage.is_local(fs) and cluster.blind_nodes(folder)[0]:
            # a local folder that other nodes cannot reach: this process writes every part
            return finish_parts(write_parts_here(in_order(scored(), source), fs, folder), fs, folder)
        pieces = sources.read_plan(source, types)
        parts = write_parts_on_cluster(scored(origin=True, pieces=pieces), fs, folder,
                                       width=max(5, len(str(len(pieces) - 1))), concurrency=concurrency, source=source)
        return finish_parts(parts, fs, folder)

    if output.format:
        return write_output(output, lambda path: write_file(in_order(scored(), source), fs, path, output.format))
    return write_output(output, write_folder)


def write_rows(batches: Iterable[pa.Table], out: Output) -> int:
    """Scored rows already in input order (a DataFrame scored here, a Dataset streamed
    here) written to `out` as `predict` writes its output; returns the rows written."""
    if out.format:
        return write_output(out, lambda path: write_file(batches, out.filesystem, path, out.format))
    return write_output(out, lambda folder: finish_parts(write_parts_here(batches, out.filesystem, folder),
                                                          out.filesystem, folder))


def default_concurrency() -> int:
    """Every CPU of the cluster: a scoring task reads its block and scores it, one CPU each."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def in_order(scored, source: sources.Source) -> Iterable[pa.Table]:
    """The scored blocks, streamed to this process in input order."""
    batches = scored.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
    it = iter(batches)
    while True:
        batch = sources.read_step(lambda: next(it, None), source)
        if batch is None:
            return
        yield batch


def write_output(out: Output, write: Callable[[str], int]) -> int:
    """`write(staging)` writes everything to the staging name and returns the rows written;
    then the output is replaced with it: a file by one move (an object store publishes the
    copy whole), a folder by `storage.publish_dir`, which writes `_SUCCESS` last. On any
    failure the staging copy goes and the previous output, if any, stays; but when the
    output is no longer what `check_output` found, the staging copy stays, and the error
    names it (`storage.changed_since`)."""
    fs = out.filesystem
    with storage.staged(fs, out.path) as staging:
        if out.format:
            fs.create_dir(posixpath.dirname(staging), recursive=True)
            rows = write(staging)
            storage.changed_since(fs, out.path, out.before, out.uri, "--output", staging)
            fs.move(staging, out.path)
        else:
            fs.create_dir(staging, recursive=True)
            rows = write(staging)
            storage.mark_owned_path(fs, staging, "predictions")
            storage.changed_since(fs, out.path, out.before, out.uri, "--output", staging)
            storage.publish_dir(fs, staging, out.path, success=SUCCESS_MARKER)
    return rows


# ---------------------------------------------------------------- a folder of parts


@dataclass(frozen=True, order=True)
class Part:
    name: str  # file name in the output folder; the names sort in input order
    rows: int
    schema: pa.Schema = field(compare=False)


def part_name(piece: int, row: int, width: int) -> str:
    """The part of input piece `piece` that starts at its row `row`."""
    return f"part-{piece:0{width}d}-{row:012d}.parquet"


def write_part(table: pa.Table, fs: storage.FileSystem, folder: str, piece: int, row: int, width: int) -> list[Part]:
    """Rows `row`.. of input piece `piece`, as parts of up to ROWS_PER_PART rows. A part cut
    short by a failure is deleted, and a failure to write names the output."""
    parts = []
    for at in range(0, table.num_rows, ROWS_PER_PART):
        rows = table.slice(at, ROWS_PER_PART)
        name = part_name(piece, row + at, width)
        path = f"{folder}/{name}"
        try:
            pq.write_table(rows, path, filesystem=fs)
        except BaseException as e:  # a cancelled task too: what it wrote of the part goes
            try:
                fs.delete_file(path)
            except OSError:
                pass
            if isinstance(e, (OSError, pa.ArrowException)):
                raise UserError(f"--output: cannot write {path}: {' '.join(str(e).split())[:400]}") from None
            raise
        parts.append(Part(name, rows.num_rows, rows.schema))
    return parts


def write_parts_here(batches: Iterable[pa.Table], fs: storage.FileSystem, folder: str) -> list[Part]:
    """All parts written by this process, from the scored batches in input order."""
    parts, row = [], 0
    for batch in batches:
        parts += write_part(batch, fs, folder, 0, row, 5)
        row += batch.num_rows
    return parts


_PART_RECORDS = pa.schema([("name", pa.string()), ("rows", pa.int64()), ("schema", pa.binary())])


def _write_block(batch: pa.Table, fs: storage.FileSystem, folder: str, width: int) -> pa.Table:
    """Ray Data batch function, after scoring: the block written as parts (its rows' origin,
    `sources.PIECE_COLUMN` and `ROW_COLUMN`, names them); returns one record per part."""
    if batch.num_rows == 0:
        return _PART_RECORDS.empty_table()
    piece, row = batch.column(sources.PIECE_COLUMN)[0].as_py(), batch.column(sources.ROW_COLUMN)[0].as_py()
    parts = write_part(batch.drop_columns([sources.PIECE_COLUMN, sources.ROW_COLUMN]), fs, folder, piece, row, width)
    return pa.table({"name": [p.name for p in parts], "rows": [p.rows for p in parts],
                     "schema": [p.schema.serialize().to_pybytes() for p in parts]}, schema=_PART_RECORDS)


def part_records(scored, fs: storage.FileSystem, folder: str, width: int, concurrency: int):
    """A lazy Dataset that, run, has each scoring task write the parts of the blocks it
    scored, one block at a time (the same task limit fuses this step into the task), and
    holds only a record (name, rows, schema) of each part."""
    import ray.data

    return scored.map_batches(_write_block, fn_args=(fs, folder, width), batch_format="pyarrow", batch_size=None,
                              num_cpus=1, compute=ray.data.TaskPoolStrategy(size=concurrency), zero_copy_batch=True)


def write_parts_on_cluster(scored, fs: storage.FileSystem, folder: str, *, width: int, concurrency: int,
                           source: sources.Source) -> list[Part]:
    """`part_records`, run: this process receives only the parts' records."""
    records = part_records(scored, fs, folder, width, concurrency)
    found = sources.read_step(lambda: [r for b in records.iter_batches(batch_size=None, batch_format="pyarrow")
                                       for r in b.to_pylist()], source)
    return [Part(r["name"], r["rows"], pa.ipc.read_schema(pa.py_buffer(r["schema"]))) for r in found]


def finish_parts(parts: Iterable[Part], fs: storage.FileSystem, folder: str) -> int:
    """Check what was written: some rows, every part the records name (and no other: this
    folder is the job's own staging copy), and one schema, `common_schema`'s (parts in
    another are rewritten in it, a batch at a time). Returns the rows written."""
    parts = sorted(parts)
    if not parts:
        raise UserError("--input holds no rows")
    there = {e.name for e in storage.entries(fs, folder) if e.name.startswith("part-")}
    for stray in there - {p.name for p in parts}:  # of a task's attempt that was retried
        fs.delete_file(f"{folder}/{stray}")
    missing = sorted({p.name for p in parts} - there)
    if missing:
        raise UserError(f"--output: {len(missing)} part(s) written for it are not in {folder} "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): a local folder "
                        f"must be one that every node of the cluster reaches")
    schema = common_schema([p.schema for p in parts])
    for part in parts:
        if not part.schema.equals(schema):
            _rewrite(fs, f"{folder}/{part.name}", schema)
    return sum(p.rows for p in parts)


def common_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The first part's columns, each in the type the parts give it: a column that is empty
    in one file reads as null there, and takes its type from a part that holds values."""
    first = schemas[0]
    fields = []
    for f in first:
        if pa.types.is_null(f.type):
            typed = (s.field(f.name).type for s in schemas[1:] if f.name in s.names)
            f = f.with_type(next((t for t in typed if not pa.types.is_null(t)), f.type))
        fields.append(f)
    return pa.schema(fields, metadata=first.metadata)


def _rewrite(fs: storage.FileSystem, path: str, schema: pa.Schema) -> None:
    conformed = f"{path}.conformed"
    with pq.ParquetFile(path, filesystem=fs) as source, pq.ParquetWriter(conformed, schema, filesystem=fs) as writer:
        for batch in source.iter_batches():
            writer.write_table(_conform(pa.Table.from_batches([batch]), schema))
    fs.delete_file(path)
    fs.move(conformed, path)


# ---------------------------------------------------------------- one file


# A single file has one schema, fixed when its writer starts; a column empty in the first
# file read as null there. The writer waits for at most this much of the first batches to
# learn such a column's type from the next files.
LOOKAHEAD_BYTES = 64 * 2**20


def write_file(batches: Iterable[pa.Table], fs: storage.FileSystem, path: str, fmt: str) -> int:
    batches = iter(batches)
    head, schema = settle_schema(batches, fmt)
    rows = 0
    with fs.open_output_stream(path) as stream:
        writer = pq.ParquetWriter(stream, schema) if fmt == "parquet" else pacsv.CSVWriter(stream, schema)
        try:
            for batch in itertools.chain(head, batches):
                writer.write_table(_conform(batch, schema, fmt))
                rows += batch.num_rows
        finally:
            writer.close()
    return rows


def settle_schema(batches: Iterator[pa.Table], fmt: str) -> tuple[list[pa.Table], pa.Schema]:
    """(The first batches, the schema to write them all in): batches are taken until every
    column has a type or LOOKAHEAD_BYTES of them are held, and a column empty in the first
    takes its type from a later one (`common_schema`). In CSV, which has no types, a column
    empty in every batch taken is text."""
    head: list[pa.Table] = []
    held, schema = 0, None
    for batch in batches:
        schema = batch.schema if schema is None else common_schema([schema, batch.schema])
        head.append(batch)
        held += batch.nbytes
        if held >= LOOKAHEAD_BYTES or not any(pa.types.is_null(t) for t in schema.types):
            break
    if schema is None:
        raise UserError("--input holds no rows")
    if fmt == "csv":
        schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema],
                           metadata=schema.metadata)
    return head, schema


def _conform(batch: pa.Table, schema: pa.Schema, fmt: str = "parquet") -> pa.Table:
    """`batch` in the output's `schema` (a column empty in one file reads as null)."""
    if batch.schema.equals(schema):
        return batch
    for name in schema.names:
        if not pa.types.is_null(schema.field(name).type) or name not in batch.column_names:
            continue
        if batch.column(name).null_count < batch.num_rows:
            raise UserError(f"--input: column {name!r} is empty in the first {LOOKAHEAD_BYTES / 2**20:.0f} MiB "
                            f"of output and holds values after that; a single {fmt} file needs its columns' "
                            "types before it is written: write to a folder or a .csv file instead")
        # empty here too, but typed (no type casts to null)
        batch = batch.set_column(batch.column_names.index(name), name, pa.nulls(batch.num_rows))
    try:
        return batch.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UserError(f"--input: the input files disagree on their columns or types ({e})") from None
