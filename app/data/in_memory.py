"""Data handed over in memory (`app.train(config)` with `data.train` a pandas DataFrame or
a Ray Dataset), or read from a database (`data.train: {sql: URL, query: ...}`), saved
into the run folder so that the run reads files like any other.

    app.train({"name": "mine", "data": {"train": df, "label": "y"}})
    python -m app train --config c.yaml    # data: {train: {sql: "sqlite:///shop.db", table: orders}, ...}

The data step reads its input twice (statistics, then the model-ready rows), splits it by
row hashes, and a resumed run reads it again after the driver restarted: all of that needs
data that stays put. So the input is written once, as Parquet, to
`<run folder>/inputs/<train|test>` (a file for a DataFrame, written by this process; a
folder of parts for a Dataset, written by Ray Data's tasks), and the config that runs
points there. `inputs/<train|test>.json` records what the input held (columns and Arrow
types, rows, a fingerprint of every row) and is written last, so a record means the data
beside it is complete. The run's `config.yaml` carries the same record under
`data.in_memory`.

Resuming (the same run name without `fresh`) with data whose fingerprint differs is
refused: the checkpoints, the fitted preprocessing and the split were made from the
first data. The fingerprint is a sum of row hashes, so it does not depend on the order of
a Dataset's blocks, only on the rows themselves and the columns' names and types.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app import runs, storage
from app.config import Config, InMemoryInput, SqlSource, is_staged
from app.errors import UserError
from app.redact import redact

log = logging.getLogger(__name__)

KEYS = ("train", "test")  # the data keys that may hold an in-memory input


def has_in_memory(cfg: Config) -> bool:
    return any(is_staged(getattr(cfg.data, key)) for key in KEYS)


def row_hash_sum(table: pa.Table, schema: pa.Schema) -> int:
    """The sum, modulo 2**64, of a hash of each row of `table` read as `schema` (the
    columns in name order; a column that is all null in this block takes the type the
    others give it): neither the order of the rows or columns nor how the rows are cut into
    blocks changes it."""
    if table.num_rows == 0:
        return 0
    names = sorted(schema.names)
    table = table.select(names).cast(pa.schema([schema.field(n) for n in names]))
    hashes = pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy(np.uint64)
    return int(hashes.sum(dtype=np.uint64))


def _hash_batch(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Ray Data batch function: one row holding the batch's row count and row hash sum."""
    return pa.table({"rows": [batch.num_rows], "hash": pa.array([row_hash_sum(batch, schema)], pa.uint64())})


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with the 64-bit-offset twins of text and bytes as their plain types: pandas
    gives large_string where Ray Data's schema of the same rows says string."""
    def plain(dtype: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(dtype):
            return pa.string()
        if pa.types.is_large_binary(dtype):
            return pa.binary()
        return dtype

    return pa.schema([pa.field(f.name, plain(f.type)) for f in schema])


def fingerprint(schema: pa.Schema, hash_sum: int) -> str:
    columns = ",".join(f"{name}:{schema.field(name).type}" for name in sorted(schema.names))
    return hashlib.sha256(f"{columns}|{hash_sum % 2**64}".encode()).hexdigest()[:32]


def describe(data: Any, key: str) -> tuple[InMemoryInput, Any]:
    """(What `data` holds, the form to write): an Arrow table of a DataFrame, or a Dataset
    (given, or read from a SQL source), materialized: a Dataset is run once, so that the
    rows hashed are the rows written (a random sample, say, would differ run to run)."""
    if isinstance(data, pd.DataFrame):
        try:
            table = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise UserError(f"data.{key}: the DataFrame cannot be stored as Arrow columns ({e})") from None
        schema = plain_schema(table.schema)
        record = InMemoryInput(kind="DataFrame", rows=table.num_rows, columns=_columns(schema),
                               fingerprint=fingerprint(schema, row_hash_sum(table, schema)))
        return record, table
    kind, source = "Dataset", None
    if isinstance(data, SqlSource):
        kind, source, data = "SQL", f"{safe_url(data.sql)} {data.select()}", read_sql(data, key)
    data = data.materialize()
    schema = data.schema()
    if schema is None or data.count() == 0:
        raise UserError(f"data.{key}: the {kind} holds no rows")
    arrow = plain_schema(pa.schema(list(zip(schema.names, schema.types))))  # unified over the blocks
    sums = data.map_batches(_hash_batch, fn_kwargs={"schema": arrow}, batch_format="pyarrow",
                            batch_size=None).to_pandas()
    rows = int(sums["rows"].sum())
    total = int(sums["hash"].to_numpy(np.uint64).sum(dtype=np.uint64))
    record = InMemoryInput(kind=kind, rows=rows, columns=_columns(arrow), fingerprint=fingerprint(arrow, total),
                           source=source)
    return record, data


def safe_url(url: str) -> str:
    """`url` with its password replaced by ***; only its scheme when it is not a URL whose
    password `redact` can find (a malformed one may still hold it)."""
    shown = redact(url)
    if "@" in shown and "***" not in shown:
        return f"{url.split(':', 1)[0]}://..."
    return shown


def read_sql(source: SqlSource, key: str):
    """The rows of a SQL source as a Ray Dataset, read by Ray Data's `read_sql` (in parallel
    where the database can split the query). Each read task opens its own connection from
    the URL through SQLAlchemy."""
    import ray.data
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(source.sql)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as e:
        raise UserError(f"data.{key}.sql: {safe_url(source.sql)} is not a database URL SQLAlchemy can use "
                        f"({redact(str(e))})") from None
    url = source.sql

    def connect():
        return sqlalchemy.create_engine(url).raw_connection()

    engine.dispose()
    try:
        return ray.data.read_sql(source.select(), connect).materialize()
    except Exception as e:  # noqa: BLE001 - a database's own errors: name the source
        raise UserError(f"data.{key}: reading {safe_url(source.sql)} failed: {redact(' '.join(str(e).split())[:300])}"
                        ) from None


def _columns(schema: pa.Schema) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}


def stage(cfg: Config, folder: str) -> Config:
    """`cfg` with each in-memory input written under `folder` (or found there, written by an
    earlier attempt of this run with the same data) and its location and record in place."""
    locations: dict[str, str] = {}
    records = dict(cfg.data.in_memory)
    for key in KEYS:
        value = getattr(cfg.data, key)
        if not is_staged(value):
            continue
        record, payload = describe(value, key)
        if record.rows == 0:
            raise UserError(f"data.{key}: the {record.kind} holds no rows")
        saved = _saved_record(folder, key)
        if saved is not None and saved.fingerprint != record.fingerprint:
            raise UserError(
                f"data.{key}: run {cfg.name!r} was started with other data ({saved.kind} of {saved.rows} rows, "
                f"fingerprint {saved.fingerprint}); this {record.kind} has {record.rows} rows, fingerprint "
                f"{record.fingerprint}. Pass fresh=True to start over, or give the run another name")
        if saved is not None:  # the same rows, perhaps handed over in the other form: the data saved stays
            record = saved
        location = _location(folder, key, record.kind)
        if saved is None:
            _write(payload, location)
            storage.write_json(storage.join(folder, runs.INPUTS, f"{key}.json"), record.model_dump())
            log.info(f"data.{key}: {record.kind} of {record.rows} rows saved to {location}")
        locations[key] = location
        records[key] = record
    data = cfg.data.model_copy(update={**locations, "in_memory": records})
    return cfg.model_copy(update={"data": data})


def _location(folder: str, key: str, kind: str) -> str:
    return storage.join(folder, runs.INPUTS, f"{key}.parquet" if kind == "DataFrame" else key)


def _saved_record(folder: str, key: str) -> InMemoryInput | None:
    found = storage.read_json(storage.join(folder, runs.INPUTS, f"{key}.json"))
    return InMemoryInput.model_validate(found) if isinstance(found, dict) else None


def _write(payload: Any, location: str) -> None:
    """Write whole under a staging name, then move into place (a cut-short write leaves
    no file under the final name, and no record)."""
    fs, path = storage.filesystem(location)
    if storage.kind(fs, path) is not None:
        storage.remove_path(fs, path)  # an earlier attempt's, unrecorded: not known to be whole
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with storage.staged(fs, path) as staging:
        if isinstance(payload, pa.Table):
            with fs.open_output_stream(staging) as stream:
                pq.write_table(payload, stream)
            fs.move(staging, path)
        else:
            payload.write_parquet(staging, filesystem=fs)
            storage.publish_dir(fs, staging, path)
