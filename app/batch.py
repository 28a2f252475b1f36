"""`predict` and `evaluate`: a checkpoint applied to a whole dataset with Ray Data.

    python -m app predict  --checkpoint runs/quickstart/checkpoint_epoch_0012 --input new.csv --output out.parquet
    python -m app evaluate --checkpoint runs/quickstart/checkpoint_epoch_0012 --data holdout.csv

Everything that can be wrong with the input (checkpoint, files, columns, output path) is
checked on the driver before Ray starts. Each block of input is read and scored by one
Ray task; a worker process loads the model once and reuses it for later blocks.
Predictions stream back to the driver in input order and are written incrementally, so
inputs larger than memory work; the output appears under its final name only once complete.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from app.data import sources
from app.data.preprocess import PreprocessState
from app.errors import UserError
from app.metrics import json_safe
from app.predict import Predictor

ROWS_PER_PART = 1_000_000  # Parquet part size when the output is a folder
SUCCESS_MARKER = "_SUCCESS"  # written last into an output folder on object storage


# ---------------------------------------------------------------- inputs


def read_types(state: PreprocessState, with_label: bool) -> dict[str, pa.DataType]:
    """CSV read types: features as the checkpoint read them in training, the label as its task
    needs; any other column is inferred."""
    types = {name: pa.type_for_alias(t) for name, t in state.input_types.items() if name in state.features}
    if with_label:
        if state.task == "regression":
            types[state.label] = pa.float64()
        elif all(isinstance(c, bool) for c in state.classes):
            types[state.label] = pa.bool_()
        elif all(isinstance(c, int) for c in state.classes):
            types[state.label] = pa.int64()
        else:
            types[state.label] = pa.string()
    return types


def check_input(predictor: Predictor, uri: str, key: str, need_label: bool) -> sources.Source:
    source = sources.resolve(uri, key)
    names = set(sources.read_schema(source).names)
    state = predictor.state
    absent = [c for c in state.features if c not in names]
    if absent:
        raise UserError(f"{key} {uri}: missing feature column(s) {', '.join(absent)} "
                        f"(the model reads: {', '.join(state.features)})")
    if need_label and state.label not in names:
        raise UserError(f"{key} {uri}: no label column {state.label!r} to evaluate against")
    return source


def load_predictor(checkpoint: str) -> Predictor:
    try:
        return Predictor.from_checkpoint(checkpoint)
    except UserError as e:
        raise UserError(f"--checkpoint: {e}") from None
    except FileNotFoundError:
        raise UserError(f"--checkpoint {checkpoint}: not a checkpoint folder (no manifest.json)") from None


# ---------------------------------------------------------------- predict


@dataclass
class Output:
    uri: str
    filesystem: pafs.FileSystem
    path: str
    format: str | None  # "csv" | "parquet" for one file; None for a folder of Parquet parts

    @property
    def staging(self) -> str:
        """Where it is written before it gets its final name. Object stores publish a file
        only when its upload completes, so there it is written in place."""
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return f"{posixpath.dirname(self.path)}/.{posixpath.basename(self.path)}.tmp-{os.getpid()}"
        return self.path


def check_output(uri: str, overwrite: bool) -> Output:
    fs, path = sources.get_filesystem(uri)
    fmt = sources.FORMATS.get(posixpath.splitext(path)[1].lower())
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.NotFound and not overwrite:
        raise UserError(f"--output {uri} already exists; remove it or pass --overwrite")
    if fmt and info.type == pafs.FileType.Directory:
        raise UserError(f"--output {uri} is a folder; a .{fmt} output must be a file")
    parent = posixpath.dirname(path)
    if isinstance(fs, pafs.LocalFileSystem) and fs.get_file_info(parent).type == pafs.FileType.File:
        raise UserError(f"--output {uri}: {parent} is a file, not a folder")
    return Output(uri, fs, path, fmt)


def run_predict(checkpoint: str, predictor: Predictor, source: sources.Source, output: Output,
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
    from app.data.prepare import read_step
    from app.predict import predict_dataset

    batches = predict_dataset(checkpoint, ds, concurrency=concurrency, batch_size=batch_size) \
        .iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
    it = iter(batches)
    while True:
        batch = read_step(lambda: next(it, None), source)
        if batch is None:
            return
        yield batch


def write_output(batches: Iterable[pa.Table], out: Output) -> int:
    fs, staging = out.filesystem, out.staging
    rows = 0
    try:
        if out.format:
            fs.create_dir(posixpath.dirname(staging), recursive=True)
            rows = _write_file(batches, fs, staging, out.format)
        else:
            fs.create_dir(staging, recursive=True)
            rows = _write_parts(batches, fs, staging)
        if staging != out.path:
            _remove(fs, out.path)
            fs.move(staging, out.path)
        elif not out.format:
            with fs.open_output_stream(f"{out.path}/{SUCCESS_MARKER}"):
                pass
    except BaseException:
        _remove(fs, staging)
        raise
    return rows


def _write_file(batches: Iterable[pa.Table], fs: pafs.FileSystem, path: str, fmt: str) -> int:
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


def _write_parts(batches: Iterable[pa.Table], fs: pafs.FileSystem, folder: str) -> int:
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


def _remove(fs: pafs.FileSystem, path: str) -> None:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


# ---------------------------------------------------------------- evaluate


def run_evaluate(checkpoint: str, predictor: Predictor, source: sources.Source) -> dict[str, Any]:
    """Metrics of the checkpoint on every labelled row of `source`, with a confusion matrix
    (classification) or a residual summary (regression)."""
    from app.data.prepare import read_step
    from app.predict import evaluate_dataset

    state = predictor.state
    ds = sources.read_dataset(source, read_types(state, with_label=True))
    result = read_step(lambda: evaluate_dataset(checkpoint, ds, state, details=True), source)
    return {"checkpoint": checkpoint, "data": source.uri, "task": state.task, "epoch": predictor.epoch,
            **result}


def format_evaluation(result: dict[str, Any]) -> str:
    lines = [f"{result['task']} on {result['rows']} labelled rows of {result['data']}", ""]
    width = max(len(k) for k in result["metrics"]) if result["metrics"] else 0
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in result["metrics"].items() if k != "loss"]
    if "confusion_matrix" in result:
        cm = result["confusion_matrix"]
        names = [str(c) for c in cm["labels"]]
        w = max(6, *(len(n) for n in names), *(len(str(v)) for row in cm["matrix"] for v in row))
        lines += ["", "confusion matrix (rows: actual, columns: predicted)",
                  " " * (w + 2) + "".join(f"{n:>{w + 2}}" for n in names)]
        lines += [f"{n:>{w + 2}}" + "".join(f"{v:>{w + 2}}" for v in row) for n, row in zip(names, cm["matrix"])]
    elif result.get("residuals"):
        lines += ["", "residuals (actual - predicted)"]
        lines += [f"  {k:<8}  {v:.4f}" for k, v in result["residuals"].items()]
    return "\n".join(lines)


def write_json(uri: str, payload: dict[str, Any]) -> None:
    from app.training.trainer import write_text

    write_text(uri, json.dumps(json_safe(payload), indent=1))
