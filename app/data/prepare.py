"""From the `data` config to model-ready, materialized Ray Datasets.

    read (Ray Data, streaming from the files) -> tag each row with its split
    -> stats of the training split (map on the cluster, reduce on the driver)
    -> fit preprocessing -> transform each split into model-ready arrays -> materialize

`inspect_sources` does the cheap checks that need no Ray (files exist, not empty,
columns present); `prepare` does the rest on the cluster. The driver only ever holds
per-batch summaries and a bounded, seeded sample of the numeric columns (for quantiles
and embedding bins), never the whole split.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from app.config import Config, check_metric
from app.data import preprocess, sources
from app.data.shards import PresplitShards
from app.data.split import SPLIT_COLUMN, TEST, TRAIN, VALID, add_split_column
from app.errors import UserError, causes


@dataclass
class Inputs:
    """What the cheap checks learned about the sources."""

    train: sources.Source
    test: sources.Source | None
    kinds: dict[str, str]  # feature -> numeric | categorical
    input_types: dict[str, str]  # feature -> the Arrow type it is read as
    column_types: dict[str, pa.DataType]  # CSV read types
    label_type: str  # Arrow type of the label in the first file


@dataclass
class Prepared:
    state: preprocess.PreprocessState
    train: Any  # MaterializedDataset of model-ready arrays
    valid: Any
    test_raw: Any  # lazy Dataset of raw test rows (labelled)
    counts: dict[str, int]
    shards: PresplitShards  # train and valid cut once for every worker count the run may use


def inspect_sources(cfg: Config) -> Inputs:
    d = cfg.data
    train = sources.resolve(d.train, "data.train")
    schema = sources.read_schema(train)
    kinds = preprocess.column_kinds(schema, d.label, d.features, d.categorical, d.drop, f"data.train ({d.train})")
    label_type = schema.field(d.label).type
    test = None
    if d.test:
        test = sources.resolve(d.test, "data.test")
        absent = [c for c in [d.label, *kinds] if c not in sources.read_schema(test).names]
        if absent:
            raise UserError(f"data.test: column(s) {', '.join(absent)} missing from {d.test}")
    column_types = sources.column_types(kinds, d.label, label_type)
    input_types = {name: str(column_types[name]) for name in kinds}
    if d.task != "auto":
        check_metric(cfg, d.task)
    return Inputs(train, test, kinds, input_types, column_types, str(label_type))


def prepare(cfg: Config, inputs: Inputs, fitted: preprocess.PreprocessState | None = None) -> Prepared:
    """Split, fit preprocessing on the training split (unless `fitted` is given), transform."""
    from ray.data import DataContext

    # Blocks in input order, not completion order: the shards cut from them, and so a
    # replayed epoch after a restart, are then the same every time.
    DataContext.get_current().execution_options.preserve_order = True
    d = cfg.data
    test_fraction = 0.0 if inputs.test else d.split.test
    raw = sources.read_dataset(inputs.train, inputs.column_types)
    tagged = read_step(lambda: raw.map_batches(
        add_split_column, fn_kwargs={"valid": d.split.valid, "test": test_fraction, "seed": d.split.seed},
        batch_format="pandas", batch_size=None).materialize(), inputs.train)

    state = fit(cfg, inputs, tagged) if fitted is None else fitted
    check_metric(cfg, state.task)

    state_json = state.to_json()
    model_ready = {}
    for name, code in (("train", TRAIN), ("valid", VALID)):
        model_ready[name] = read_step(lambda code=code: tagged.map_batches(
            preprocess.transform_batch, fn_kwargs={"state_json": state_json, "split": code},
            batch_format="pandas", batch_size=None).materialize(), inputs.train)
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


def fit(cfg: Config, inputs: Inputs, tagged) -> preprocess.PreprocessState:
    """Map: stats of each batch of training rows, on the cluster; reduce: on the driver."""
    d = cfg.data
    sample_rows = cfg.preprocess.sample_rows
    summaries = tagged.map_batches(
        _train_stats, fn_kwargs={"kinds": inputs.kinds, "label": d.label, "sample_rows": sample_rows},
        batch_format="pandas", batch_size=None)
    parts, sample = read_step(lambda: _collect(summaries, sample_rows), inputs.train)
    stats = preprocess.merge_stats(parts)
    state, warnings = preprocess.fit_preprocessor(
        stats, inputs.kinds, d.label, d.task, cfg.preprocess.min_category_count,
        cfg.preprocess.missing_indicators, inputs.input_types, f"data.train ({d.train})",
        frozenset(d.categorical), inputs.label_type)
    numeric = [n for n, k in inputs.kinds.items() if k == "numeric"]
    preprocess.fit_numeric_scaling(state, sample.result(numeric), cfg.preprocess.numeric_scaling,
                                   cfg.preprocess.embedding_bins)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return state


def _collect(summaries, sample_rows: int) -> tuple[list[dict[str, Any]], preprocess.SampleMerger]:
    """Per-batch stats, and the sample merged as the batches stream in (the driver holds
    at most 3 x sample_rows rows of it at any time)."""
    parts, sample = [], preprocess.SampleMerger(sample_rows)
    for row in summaries.iter_rows():
        parts.append(json.loads(row["stats"]))
        sample.add(np.frombuffer(row["sample"], dtype=np.float64).reshape(-1, row["sample_columns"]))
    return parts, sample


def _train_stats(df, kinds, label, sample_rows):
    return preprocess.partial_stats_batch(df, kinds, label, train_mask=(df[SPLIT_COLUMN] == TRAIN).to_numpy(),
                                          sample_rows=sample_rows)


def _only_split(df, split):
    return df[df[SPLIT_COLUMN] == split].drop(columns=[SPLIT_COLUMN])


def read_step(step, source: sources.Source):
    """Run a Ray Data step; a file that cannot be parsed becomes a UserError naming it."""
    try:
        return step()
    except Exception as e:
        cause = next((c for c in causes(e) if isinstance(c, (pa.ArrowInvalid, UnicodeDecodeError))), None)
        if cause is None:
            raise
        text = " ".join(str(cause).split())[:400]
        raise UserError(f"{source.key}: cannot read {source.uri}: {text}") from None
