"""The `predict` command: a checkpoint applied to a whole dataset with Ray Data.

    python -m app predict --checkpoint runs/quickstart/checkpoint_epoch_0012 --input new.csv --output out.parquet

Everything that can be wrong with the input (checkpoint, files, columns, output path) is
checked on the driver before Ray starts. Each block of input is read and scored by one
Ray task; a worker process loads the model once and reuses it for later blocks.
Predictions stream back to the driver in input order and are written incrementally, so
inputs larger than memory work.

The output is written complete beside its final name first (`.<name>.tmp-<id>`) and only
then takes that name, so a failed job leaves a previous output as it was. `--overwrite`
replaces a file, or a folder this app wrote (it holds `storage.OWNED`); any other folder
is refused, never deleted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

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
    concurrency = concurrency or default_concurrency()
    # The same task limit on both steps: Ray Data then fuses reading a block and scoring
    # it into one task, and raw rows never pass through the object store.
    ds = sources.read_dataset(source, read_types(predictor.state, with_label=False), concurrency)
    scored = predict_steps(checkpoint, ds, concurrency, batch_size, source)
    return write_output(scored, output)


def default_concurrency() -> int:
    """Every CPU of the cluster: a scoring task reads its block and scores it, one CPU each."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def predict_steps(checkpoint: str, ds, concurrency: int, batch_size: int,
                  source: sources.Source) -> Iterable[pa.Table]:
    batches = predict_dataset(checkpoint, ds, concurrency=concurrency, batch_size=batch_size) \
        .iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
    it = iter(batches)
    while True:
        batch = sources.read_step(lambda: next(it, None), source)
        if batch is None:
            return
        yield batch


def write_output(batches: Iterable[pa.Table], out: Output) -> int:
    """Write everything to the staging name, then replace the output with it: a file by one
    move (an object store publishes the copy whole), a folder by `storage.publish_dir`,
    which writes `_SUCCESS` last. On any failure the staging copy goes and the previous
    output, if any, stays."""
    fs = out.filesystem
    with storage.staged(fs, out.path) as staging:
        if out.format:
            fs.create_dir(posixpath.dirname(staging), recursive=True)
            rows = _write_file(batches, fs, staging, out.format)
            fs.move(staging, out.path)
        else:
            fs.create_dir(staging, recursive=True)
            rows = _write_parts(batches, fs, staging)
            storage.mark_owned_path(fs, staging, "predictions")
            storage.publish_dir(fs, staging, out.path, success=SUCCESS_MARKER)
    return rows


def _write_file(batches: Iterable[pa.Table], fs: storage.FileSystem, path: str, fmt: str) -> int:
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


def _write_parts(batches: Iterable[pa.Table], fs: storage.FileSystem, folder: str) -> int:
    rows, part, writer, schema, in_part = 0, 0, None, None, 0
    try:
        for batch in batches:
            if writer is None:
                schema = schema or batch.schema
                writer = pq.ParquetWriter(f"{folder}/part-{part:05d}.parquet", schema, filesystem=fs)
            writer.write_table(_conform(batch, schema))
            rows += batch.num_rows
            in_part += batch.num_rows
            if in_part >= ROWS_PER_PART:
                writer.close()
                writer, part, in_part = None, part + 1, 0
        if rows == 0:
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
