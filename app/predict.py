"""The `predict` command: a checkpoint applied to a whole dataset with Ray Data.

    python -m app predict --checkpoint runs/quickstart/checkpoint_epoch_0012 --input new.csv --output out.parquet

Everything that can be wrong with the input (checkpoint, files, columns, output path) is
checked on the driver before Ray starts. Each piece of input is read and scored by one
Ray task; a worker process loads the model once and reuses it for later pieces. A folder
output is written by those same tasks, one set of parts per piece, named in input order:
no predicted row passes through the driver. A single-file output has one writer, the
driver, to which predictions stream back in input order and are written as they come;
inputs larger than memory work either way.

The output is written complete beside its final name first (`.<name>.tmp-<id>`) and only
then takes that name, so a failed job leaves a previous output as it was. `--overwrite`
replaces a file, or a folder this app wrote (it holds `storage.OWNED`); any other folder
is refused, never deleted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app import storage
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


def check_output(uri: str, overwrite: bool) -> Output:
    fs, path = storage.filesystem(uri)
    fmt = sources.FORMATS.get(posixpath.splitext(path)[1].lower())
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
    return Output(uri, fs, path, fmt)


def run_predict(checkpoint: str, predictor: Predictor, source: sources.Source, output: Output, *,
                batch_size: int, concurrency: int | None) -> int:
    """Score every input row and write the output; returns the number of rows written."""
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True
    # Reading a piece, scoring it and (for a folder) writing it run as one task, so neither
    # raw nor scored rows pass through the object store. Ray Data fuses the steps only if
    # their task limits agree, and a fused write loses its limit (Ray 2.60); so no step has
    # one, and the job's CPUs, one per task, are capped instead.
    ds = sources.read_dataset(source, read_types(predictor.state, with_label=False))
    scored = predict_dataset(checkpoint, ds, concurrency=None, batch_size=batch_size)
    limits = scored.context.execution_options
    limits.resource_limits = limits.resource_limits.copy(cpu=concurrency or default_concurrency())
    if output.format:
        return write_output(output, lambda path: write_file(in_order(scored, source), output.filesystem, path,
                                                             output.format))
    return write_output(output, lambda folder: write_parts_on_cluster(scored, output.filesystem, folder, source))


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
    failure the staging copy goes and the previous output, if any, stays."""
    fs = out.filesystem
    with storage.staged(fs, out.path) as staging:
        if out.format:
            fs.create_dir(posixpath.dirname(staging), recursive=True)
            rows = write(staging)
            fs.move(staging, out.path)
        else:
            fs.create_dir(staging, recursive=True)
            rows = write(staging)
            storage.mark_owned_path(fs, staging, "predictions")
            storage.publish_dir(fs, staging, out.path, success=SUCCESS_MARKER)
    return rows


@dataclass(frozen=True, order=True)
class Part:
    name: str  # file name in the output folder; the names sort in input order
    rows: int
    schema: pa.Schema = field(compare=False)


def part_name(piece: int, k: int) -> str:
    return f"part-{piece:05d}-{k:03d}.parquet"


def write_parts(batches: Iterable[pa.Table], fs: storage.FileSystem, folder: str, piece: int) -> list[Part]:
    """One piece's scored batches as parts of up to ROWS_PER_PART rows, in the first batch's
    schema; nothing for a piece without rows. Runs in the task that scored the piece."""
    parts: list[Part] = []
    writer, schema, in_part = None, None, 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if writer is None:
                schema = schema or batch.schema
                writer = pq.ParquetWriter(f"{folder}/{part_name(piece, len(parts))}", schema, filesystem=fs)
            writer.write_table(_conform(batch, schema))
            in_part += batch.num_rows
            if in_part >= ROWS_PER_PART:
                writer.close()
                parts.append(Part(part_name(piece, len(parts)), in_part, schema))
                writer, in_part = None, 0
        if writer is not None:
            writer.close()
            parts.append(Part(part_name(piece, len(parts)), in_part, schema))
            writer = None
    finally:
        if writer is not None:
            writer.close()
    return parts


def finish_parts(parts: Iterable[Part], fs: storage.FileSystem, folder: str) -> int:
    """Check what the pieces wrote: some rows, and one schema, the first part's (a column
    that is empty in one file reads as null there: such a part is rewritten in it, a batch
    at a time). Returns the rows written."""
    parts = sorted(parts)
    if not parts:
        raise UserError("--input holds no rows")
    schema = parts[0].schema
    for part in parts:
        if not part.schema.equals(schema):
            _rewrite(fs, f"{folder}/{part.name}", schema)
    return sum(p.rows for p in parts)


def _rewrite(fs: storage.FileSystem, path: str, schema: pa.Schema) -> None:
    conformed = f"{path}.conformed"
    with pq.ParquetFile(path, filesystem=fs) as source, pq.ParquetWriter(conformed, schema, filesystem=fs) as writer:
        for batch in source.iter_batches():
            writer.write_table(_conform(pa.Table.from_batches([batch]), schema))
    fs.delete_file(path)
    fs.move(conformed, path)


def write_parts_on_cluster(scored, fs: storage.FileSystem, folder: str, source: sources.Source) -> int:
    """Each scoring task writes its own piece's parts (Ray Data numbers the tasks in input
    order while `preserve_order` is set); the driver only receives the parts' names and sizes."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class Parts(Datasink):
        def __init__(self):
            self.written: list[Part] = []

        def write(self, blocks, ctx) -> list[Part]:
            return write_parts((BlockAccessor.for_block(b).to_arrow() for b in blocks), fs, folder, ctx.task_idx)

        def on_write_complete(self, write_result) -> None:
            self.written = [part for parts in write_result.write_returns for part in parts]

        def get_name(self) -> str:
            return "Parts"

    sink = Parts()
    sources.read_step(lambda: scored.write_datasink(sink, ray_remote_args={"num_cpus": 1}), source)
    return finish_parts(sink.written, fs, folder)


def write_file(batches: Iterable[pa.Table], fs: storage.FileSystem, path: str, fmt: str) -> int:
    rows, writer, schema = 0, None, None
    with fs.open_output_stream(path) as stream:
        try:
            for batch in batches:
                if writer is None:
                    schema = batch.schema
                    writer = pq.ParquetWriter(stream, schema) if fmt == "parquet" else pacsv.CSVWriter(stream, schema)
                writer.write_table(_conform(batch, schema))
                rows += batch.num_rows
            if writer is None:
                raise UserError("--input holds no rows")
        finally:
            if writer is not None:
                writer.close()
    return rows


def _conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Later batches in the first batch's schema (a column empty in one file reads as null)."""
    if batch.schema.equals(schema):
        return batch
    try:
        return batch.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UserError(f"--input: the input files disagree on their columns or types ({e})") from None
