"""From the `data` config to model-ready, materialized Ray Datasets.

    read (Ray Data, streaming from the files) -> tag each row with its split
    -> stats of the training split (map on the cluster, reduce on the driver)
    -> fit preprocessing -> transform each split into model-ready arrays -> materialize

`inspect_sources` does the cheap checks that need no Ray (files exist, not empty, every
file has the columns, once each, and Parquet files agree on their types); `prepare` does
the rest on the cluster. The driver only ever holds the summaries merged so far (at most
a few times `data.max_categories` categories per column) and a bounded, seeded sample of
the numeric columns (for quantiles and embedding bins), never the whole split.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from app.config import Config, check_metric
from app.data import preprocess, sources
from app.data.shards import PresplitShards
from app.data.sources import Inputs
from app.data.split import SPLIT_COLUMN, TEST, TRAIN, VALID, assign_split
from app.data.transform import PreprocessState, scorable, transform
from app.errors import UserError


@dataclass
class Prepared:
    state: PreprocessState
    train: Any  # MaterializedDataset of model-ready arrays
    valid: Any
    test_raw: Any  # lazy Dataset of raw test rows (labelled)
    counts: dict[str, int]
    shards: PresplitShards  # train and valid cut once for every worker count the run may use


def inspect_sources(cfg: Config) -> Inputs:
    d = cfg.data
    train = sources.resolve(d.train, "data.train")
    schema = sources.read_schema(train)
    kinds = preprocess.column_kinds(schema, d)
    # A column that is all empty in the first file takes its type from the first file that
    # has values in it (else it would be read as numbers from every file).
    types = sources.check_files(train, [d.label, *kinds])
    schema = pa.schema([pa.field(f.name, types.get(f.name, f.type)) if pa.types.is_null(f.type) else f
                        for f in schema])
    kinds = preprocess.column_kinds(schema, d)
    label_type = schema.field(d.label).type
    test = None
    if d.test:
        test = sources.resolve(d.test, "data.test")
        absent = [c for c in [d.label, *kinds] if c not in sources.read_schema(test).names]
        if absent:
            raise UserError(f"data.test: column(s) {', '.join(absent)} missing from {d.test}")
        expected = {name: "number" for name, kind in kinds.items()
                    if kind == "numeric" and not pa.types.is_null(schema.field(name).type)}
        if not pa.types.is_null(label_type):
            expected[d.label] = sources.type_kind(label_type)
        sources.check_files(test, [d.label, *kinds], expected)
    column_types = sources.column_types(kinds, d.label, label_type)
    input_types = {name: str(column_types[name]) for name in kinds}
    if d.task != "auto":
        check_metric(cfg.run.checkpoint.metric, d.task, key="run.checkpoint.metric")
    return Inputs(train, test, kinds, input_types, column_types, str(label_type))


def prepare(cfg: Config, inputs: Inputs, fitted: PreprocessState | None = None) -> Prepared:
    """Split, fit preprocessing on the training split (unless `fitted` is given), transform."""
    from ray.data import DataContext

    # Blocks in input order, not completion order: the shards cut from them, and so a
    # replayed epoch after a restart, are then the same every time.
    DataContext.get_current().execution_options.preserve_order = True
    d = cfg.data
    test_fraction = 0.0 if inputs.test else d.split.test
    raw = sources.read_dataset(inputs.train, inputs.column_types)
    tagged = sources.read_step(lambda: raw.map_batches(
        add_split_column, fn_kwargs={"valid": d.split.valid, "test": test_fraction, "seed": d.split.seed},
        batch_format="pandas", batch_size=None).materialize(), inputs.train, inputs.column_types)

    state = fit(cfg, inputs, tagged) if fitted is None else fitted
    check_metric(cfg.run.checkpoint.metric, state.task, key="run.checkpoint.metric")

    state_json = state.to_json()
    model_ready = {}
    for name, code in (("train", TRAIN), ("valid", VALID)):
        model_ready[name] = sources.read_step(lambda code=code: tagged.map_batches(
            transform_batch, fn_kwargs={"state_json": state_json, "split": code},
            batch_format="pandas", batch_size=None).materialize(), inputs.train, inputs.column_types)
    if inputs.test:
        test_raw = sources.read_dataset(inputs.test, inputs.column_types)
    else:
        test_raw = tagged.map_batches(_only_split, fn_kwargs={"split": TEST}, batch_format="pandas",
                                      batch_size=None)
    counts = {name: ds.count() for name, ds in model_ready.items()}
    if counts["valid"] < cfg.scaling.max_workers:
        raise UserError(f"data.split.valid: the validation split has {counts['valid']} row(s), fewer than "
                        f"the {cfg.scaling.max_workers} workers; use more data or a larger fraction")
    if counts["train"] < cfg.scaling.max_workers:
        raise UserError(f"data.train: {counts['train']} training row(s) cannot feed "
                        f"{cfg.scaling.max_workers} workers")
    shards = PresplitShards(model_ready, range(cfg.scaling.min_workers, cfg.scaling.max_workers + 1))
    return Prepared(state, model_ready["train"], model_ready["valid"], test_raw, counts, shards)


def fit(cfg: Config, inputs: Inputs, tagged) -> PreprocessState:
    """Map: stats of each batch of training rows, on the cluster; reduce: on the driver."""
    d = cfg.data
    sample_rows = cfg.preprocess.sample_rows
    summaries = tagged.map_batches(
        _train_stats, fn_kwargs={"kinds": inputs.kinds, "label": d.label, "sample_rows": sample_rows,
                                 "max_categories": d.max_categories},
        batch_format="pandas", batch_size=None)
    stats, sample = sources.read_step(lambda: _collect(summaries, sample_rows, d.max_categories), inputs.train,
                                      inputs.column_types)
    state, warnings = preprocess.fit_preprocessor(stats, data=d, preprocess=cfg.preprocess, inputs=inputs)
    numeric = [n for n, k in inputs.kinds.items() if k == "numeric"]
    preprocess.fit_numeric_scaling(state, sample.result(numeric), cfg.preprocess.numeric_scaling,
                                   cfg.preprocess.embedding_bins)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return state


def _collect(summaries, sample_rows: int, max_categories: int) -> tuple[dict[str, Any], preprocess.SampleMerger]:
    """The merged stats and the sample, both merged as the batches stream in (the driver
    holds at most 3 x sample_rows rows of the sample, and a bounded number of categories
    per column, at any time)."""
    stats, sample = preprocess.StatsMerger(max_categories), preprocess.SampleMerger(sample_rows)
    for row in summaries.iter_rows():
        stats.add(json.loads(row["stats"]))
        sample.add(np.frombuffer(row["sample"], dtype=np.float64).reshape(-1, row["sample_columns"]))
    return stats.result(), sample


# ---------------------------------------------------------------- Ray Data batch functions


def add_split_column(df: pd.DataFrame, valid: float, test: float, seed: int) -> pd.DataFrame:
    """Tag each row with its split code (app/data/split.py)."""
    df = df.copy()
    df[SPLIT_COLUMN] = assign_split(df, valid, test, seed)
    return df


def partial_stats_batch(df: pd.DataFrame, kinds: dict[str, str], label: str,
                        train_mask: np.ndarray | None = None, sample_rows: int = 0,
                        max_categories: int = preprocess.DEFAULT_MAX_CATEGORIES) -> pd.DataFrame:
    """One row holding the stats of the batch's training rows as JSON, and (`sample_rows`
    > 0) this batch's candidates for the seeded sample."""
    train = df if train_mask is None else df[train_mask]
    stats = preprocess.partial_stats(train, kinds, label, all_rows=df, max_categories=max_categories)
    sample = preprocess.sample_candidates(train, kinds, label, sample_rows) if sample_rows else np.zeros((0, 0))
    return pd.DataFrame({"stats": [json.dumps(stats)], "sample": [sample.tobytes()],
                         "sample_columns": [sample.shape[1]]})


def transform_batch(df: pd.DataFrame, state_json: str, split: int | None) -> dict[str, np.ndarray]:
    """Keep one split's labelled rows (all with `split` None); return model-ready arrays."""
    state = PreprocessState.from_json(state_json)
    if split is not None:
        df = df[df[SPLIT_COLUMN] == split]
    df = df[df[state.label].notna()]
    out = transform(df, state)
    keep = scorable(out["y"], state)
    return {k: v[keep] for k, v in out.items()} if not keep.all() else out


def _train_stats(df, kinds, label, sample_rows, max_categories):
    return partial_stats_batch(df, kinds, label, train_mask=(df[SPLIT_COLUMN] == TRAIN).to_numpy(),
                               sample_rows=sample_rows, max_categories=max_categories)


def _only_split(df, split):
    return df[df[SPLIT_COLUMN] == split].drop(columns=[SPLIT_COLUMN])
