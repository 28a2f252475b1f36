"""From the `data` config to model-ready, materialized Ray Datasets.

    python -m app train --config configs/quickstart.yaml

    pass 1, a task per piece: read -> tag each row with its split -> summary of the training rows
    driver: merge the summaries as they arrive -> fit preprocessing
    pass 2, a task per piece: model-ready train and valid blocks -> Ray Datasets

A piece is a file, or a part of a big one (sources.plan_pieces), so that one big file
is read and processed on several CPUs. Each pass is plain Ray tasks over the pieces, not
a Ray Data job: pass 1 returns three things per piece (the training and validation rows,
the test rows, the summary), and a Ray Data job costs a quarter second or more to start
on a small machine. Pass 2 reads pass 1's rows from the object store, and its blocks
become the datasets without another pass. Inputs up to SMALL_INPUT_BYTES take the same
steps in this process, without any Ray task: for them Ray's start-up costs more than the
work. Their shards reach the workers as one object per split (`shards.HeldShards`), not
through Ray Data.

`inspect_sources` does the cheap checks that need no Ray (files exist, not empty, every
file has the columns, once each, and Parquet files agree on their types); `prepare` does
the rest. The driver only ever holds the summaries merged so far (at most a few times
`data.max_categories` categories per column) and a bounded, seeded sample of the numeric
columns (for quantiles and embedding bins), never the whole split.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from app import progress
from app.config import Config, ModelConfig, check_metric
from app.data import index_column, preprocess, sources
from app.data.shards import COLUMNS, HeldShards, PresplitShards
from app.data.sources import Inputs, Piece, Source
from app.data.split import SPLIT_COLUMN, TEST, TRAIN, VALID, RowValues, split_codes
from app.data.transform import (
    PreprocessState,
    category_codes,
    class_indices,
    numeric_matrix,
    scaled_target,
    scorable,
    transform,
)
from app.errors import UserError, causes

log = logging.getLogger(__name__)

SMALL_INPUT_BYTES = 32 << 20  # training files up to this size are prepared in this process


@dataclass
class Prepared:
    state: PreprocessState
    train: Any  # MaterializedDataset of model-ready arrays
    valid: Any
    test_raw: Any  # Dataset of raw test rows (labelled)
    counts: dict[str, int]
    shards: PresplitShards | HeldShards  # train and valid, cut for any worker count the run may use
    test_tables: list[pa.Table] | None = None  # test_raw's rows in this process (small inputs); else None


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
    index_column.warn_saved_index(list(kinds), d)
    label_type = schema.field(d.label).type
    test = None
    if d.test:
        test = sources.resolve(d.test, "data.test")
        preprocess.check_columns(sources.read_schema(test).names, [d.label, *kinds], f"data.test {d.test}",
                                 what="column(s)")
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


def prepare(cfg: Config, inputs: Inputs, fitted: PreprocessState | None = None, *,
            bins: bool | None = None) -> Prepared:
    """Split, fit preprocessing on the training split (unless `fitted` is given), transform.
    `bins`: fit the numeric embeddings' bins too (default: when `cfg.model` uses them; a
    sweep whose trials may use another model asks for them)."""
    if bins is None:
        bins = uses_bins(cfg.model)
    import ray.data
    from ray.data import DataContext

    # Blocks in input order, not completion order, wherever a Ray Data job runs over these
    # datasets: the shards cut from them, and so a replayed epoch after a restart, are then
    # the same every time.
    DataContext.get_current().execution_options.preserve_order = True
    here = inputs.train.total_bytes <= SMALL_INPUT_BYTES
    whole: set[str] = set()  # CSV files that cannot be read in byte ranges
    while True:
        pieces = sources.plan_pieces(inputs.train, inputs.column_types, math.inf if here else sources.piece_bytes(inputs.train),
                                     whole=frozenset(whole))
        try:
            state, parts = sources.read_step(lambda p=pieces: _two_passes(cfg, inputs, p, fitted, here, bins), inputs.train)
            break
        except Exception as e:
            cut = next((c for c in causes(e) if isinstance(c, sources.ReadWhole)), None)
            if cut is None:
                raise
            whole.add(cut.path)

    as_dataset = ray.data.from_arrow if here else ray.data.from_arrow_refs
    model_ready = sources.read_step(lambda: {name: as_dataset(list(parts[name])) for name in ("train", "valid")},
                                    inputs.train)
    test_raw = sources.read_dataset(inputs.test, inputs.column_types, columns=(*inputs.kinds, cfg.data.label)) \
        if inputs.test else as_dataset(list(parts["test"]))
    counts = {name: ds.count() for name, ds in model_ready.items()}
    if counts["valid"] < cfg.scaling.max_workers:
        raise UserError(f"data.split.valid: the validation split has {counts['valid']} row(s), fewer than "
                        f"the {cfg.scaling.max_workers} workers; use more data or a larger fraction")
    if counts["train"] < cfg.scaling.max_workers:
        raise UserError(f"data.train: {counts['train']} training row(s) cannot feed "
                        f"{cfg.scaling.max_workers} workers")
    if not here:
        shards = PresplitShards(model_ready, range(cfg.scaling.min_workers, cfg.scaling.max_workers + 1))
        return Prepared(state, model_ready["train"], model_ready["valid"], test_raw, counts, shards)
    shards = HeldShards({name: numpy_arrays(parts[name]) for name in model_ready})
    return Prepared(state, model_ready["train"], model_ready["valid"], test_raw, counts, shards,
                    test_tables=None if inputs.test else list(parts["test"]))


def numpy_arrays(blocks: list[pa.Table]) -> dict[str, np.ndarray]:
    """The model-ready blocks of a split as one array per column: what a Ray Data reader of
    the blocks gets (`iter_batches(batch_format="numpy")`), joined."""
    from ray.data.block import BlockAccessor

    batches = [BlockAccessor.for_block(b).to_batch_format("numpy") for b in blocks if b.num_rows]
    return {c: np.concatenate([b[c] for b in batches]) for c in COLUMNS}


def uses_bins(model: ModelConfig) -> bool:
    """Whether `model` (or, for an ensemble, one of its members) embeds its numeric inputs
    piecewise-linearly, on bins fitted here."""
    kinds = model.ensemble.members if model.kind == "ensemble" else [model.kind]
    return "tabm" in kinds and model.num_embeddings == "piecewise_linear"


def _two_passes(cfg: Config, inputs: Inputs, pieces: list[Piece], fitted: PreprocessState | None,
                here: bool, bins: bool) -> tuple[PreprocessState, dict[str, list]]:
    """(the fitted state, {"train" | "valid" | "test": a block per piece}): Arrow tables
    (`here`), or object refs to the blocks that Ray tasks return."""
    d = cfg.data
    plan = PassOne(d.split.valid, 0.0 if inputs.test else d.split.test, d.split.seed, inputs.kinds, d.label,
                   summarise=fitted is None, max_categories=d.max_categories, sample_rows=cfg.preprocess.sample_rows)
    files = inputs.train.per_file()
    # Where a terminal shows it, a bar counts the pieces of each pass: done in this process
    # one by one, or on the cluster as their summaries are merged (pass 1) and their blocks ready (pass 2).
    with progress.bar("data pass 1/2 (read, split)", total=len(pieces), unit="piece") as bar:
        tagged = [progress.tick(_task(tag_piece, 4, here)(files[p.path], p, inputs.column_types, plan), bar, here)
                  for p in pieces]
        candidates = [c for *_, c in tagged] if plan.summarise else []
        if candidates and not here:  # merged on the cluster while the statistics are merged here
            candidates = [_merge_on_cluster(candidates, plan.sample_rows)]
        infos = enumerate(i for _, _, i, _ in tagged) if here else \
            (progress.tick(item, bar) for item in _in_order([i for _, _, i, _ in tagged]))
        stats = _merge(infos, pieces, plan, cfg)
    sample = preprocess.SampleMerger(plan.sample_rows)
    for part in candidates if here else (merged for _, merged in _in_order(candidates)):
        sample.add(part)
    state, sampled = (fitted, None) if fitted is not None else fit(cfg, inputs, stats, sample)
    check_metric(cfg.run.checkpoint.metric, state.task, key="run.checkpoint.metric")
    state_json = state.to_json()
    with progress.bar("data pass 2/2 (preprocess)", total=len(pieces), unit="piece") as bar:
        ready = [progress.tick(_task(model_ready_piece, 2, here)(rows, state_json), bar, here) for rows, *_ in tagged]
        if sampled is not None and bins:  # while pass 2 runs
            preprocess.fit_bins(state, sampled, cfg.preprocess.embedding_bins)
        if not here:
            progress.wait([t for t, _ in ready], bar)
    return state, {"train": [t for t, _ in ready], "valid": [v for _, v in ready], "test": [t for _, t, *_ in tagged]}


SAMPLE_FAN_IN = 8  # candidate sets that one merging task takes


def _merge_on_cluster(candidates: list, size: int):
    """A ref to the pieces' sample candidates merged (`merge_candidates`) by Ray tasks, at
    most SAMPLE_FAN_IN sets each, in a tree: this process fetches one merged set, whatever
    the number of pieces, instead of each piece's (up to `size` rows each)."""
    merge = _remote(merge_candidates, 1)
    while len(candidates) > 1:
        candidates = [merge.remote(size, *candidates[i:i + SAMPLE_FAN_IN])
                      for i in range(0, len(candidates), SAMPLE_FAN_IN)]
    return candidates[0]


def merge_candidates(size: int, *candidates: np.ndarray) -> np.ndarray:
    """Sample candidates merged: the rows with the `size` smallest hashes, and any tied with
    the last of them (a merging task of `_merge_on_cluster`). Merged in any grouping and
    order, they give the same sample."""
    merger = preprocess.SampleMerger(size)
    for part in candidates:
        merger.add(part)
    return merger.candidates()


def _task(fn, returns: int, here: bool):
    """`fn` itself (`here`), or `fn` as a Ray task that returns `returns` objects."""
    if here:
        return fn
    return _remote(fn, returns).remote


@functools.cache
def _remote(fn, returns: int):
    """`fn` as a Ray remote function, made once per process: each new one would be pickled
    and exported to the cluster again."""
    import ray

    return ray.remote(fn).options(num_returns=returns)


def _merge(infos: Iterable[tuple[int, dict[str, Any]]], pieces: list[Piece], plan: PassOne,
           cfg: Config) -> preprocess.StatsMerger:
    """The pieces' statistics merged in piece order as they come (the driver holds a bounded
    number of categories per column at any time), once every cut is known to be good: a bad
    cut would show as bad values."""
    stats = preprocess.StatsMerger(cfg.data.max_categories)
    quotes: list[int | None] = [None] * len(pieces)
    for i, info in infos:
        quotes[i] = info["quotes"]
        if plan.summarise:
            stats.add(info["stats"])
    sources.check_cuts(pieces, quotes)
    return stats


def _in_order(refs: list) -> Iterator[tuple[int, Any]]:
    """(position in `refs`, the object behind it), in the order of `refs`: merged in piece
    order, the summaries give the same fitted state however the tasks happen to finish (the
    categories a column keeps past `data.max_categories`, and means to the last bit, depend
    on the order of the merges). Every task is running meanwhile; this only orders the merges."""
    import ray

    for i, ref in enumerate(refs):
        yield i, ray.get(ref)


def fit(cfg: Config, inputs: Inputs, stats: preprocess.StatsMerger, sample: preprocess.SampleMerger
        ) -> tuple[PreprocessState, pd.DataFrame]:
    """(Preprocessing fitted on the merged summaries of the training split, but for the
    embedding bins, which only the model needs; the sample to fit those on.)"""
    state, warnings = preprocess.fit_preprocessor(stats.result(), data=cfg.data, preprocess=cfg.preprocess,
                                                  inputs=inputs)
    sampled = sample.result([n for n, k in inputs.kinds.items() if k == "numeric"])
    preprocess.fit_quantiles(state, sampled, cfg.preprocess.numeric_scaling)
    for w in warnings:
        log.warning(w)
    return state, sampled


# ---------------------------------------------------------------- the tasks of the two passes


@dataclass(frozen=True)
class PassOne:
    """What pass 1 does to each piece: split its rows, and (`summarise`) sum up its
    training rows for fitting."""

    valid: float
    test: float
    seed: int
    kinds: dict[str, str]
    label: str
    summarise: bool
    max_categories: int
    sample_rows: int


def tag_piece(source: Source, piece: Piece, column_types: dict[str, pa.DataType], plan: PassOne
              ) -> tuple[pa.Table, pa.Table, dict[str, Any], np.ndarray]:
    """Pass 1 (a Ray task): read one piece and split it: (its training and validation rows:
    the features and label, text dictionary-encoded, and the split code; its test rows as
    read; {"quotes": for a CSV byte range, the quote characters in it (sources.check_cuts),
    and with `plan.summarise` the "stats" of its training rows}; with `plan.summarise` the
    sample candidates of its training rows, else none).
    """
    # Only the columns the model reads: a dropped or unused column is never parsed, and does
    # not count in the split's hash (rows that differ only in an id are the same example).
    table, quotes = sources.read_piece(source, piece, column_types, (*plan.kinds, plan.label))
    rows = RowValues(table)
    codes = split_codes(rows, plan.valid, plan.test, plan.seed)
    info: dict[str, Any] = {"quotes": quotes}
    candidates = np.zeros((0, 1))
    if plan.summarise:
        train = codes == TRAIN
        info["stats"] = preprocess.partial_stats(rows, plan.kinds, plan.label, train, plan.max_categories)
        candidates = preprocess.sample_candidates(rows, plan.kinds, plan.label, plan.sample_rows, train)
    held_out = codes == TEST
    kept = rows.compact([*plan.kinds, plan.label]).append_column(SPLIT_COLUMN, pa.array(codes))
    return (kept.filter(~held_out) if held_out.any() else kept), table.filter(held_out), info, candidates


def model_ready_piece(rows: pa.Table, state_json: str) -> tuple[pa.Table, pa.Table]:
    """Pass 2 (a Ray task): one piece's model-ready training and validation blocks."""
    from ray.data.block import BlockAccessor

    arrays, taken = model_ready(RowValues(rows), PreprocessState.from_json(state_json))
    code = rows.column(SPLIT_COLUMN).to_numpy()[taken]
    return tuple(BlockAccessor.batch_to_block({k: v[code == c] for k, v in arrays.items()}) for c in (TRAIN, VALID))


def model_ready(rows: RowValues, state: PreprocessState) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(`transform` of the labelled rows, keeping those with a scorable label; the positions
    of those rows): the same arrays as `transform_batch`, from each column's canonical form,
    with category lookups done once per distinct value."""
    labelled = ~rows.missing(state.label)
    n = int(labelled.sum())
    x_num = numeric_matrix([rows.numbers(c.name)[labelled] for c in state.numeric], state, n)
    x_cat = np.empty((n, len(state.categorical)), dtype=np.int64)
    for i, col in enumerate(state.categorical):
        t = rows.texts(col.name)
        lookup = category_codes(pd.Series([*t.texts, None], dtype=object), col)  # code -1 (missing): the last
        x_cat[:, i] = lookup[t.codes[labelled]]
    if state.task == "classification":
        t = rows.texts(state.label)
        y = class_indices(pd.Series(t.texts, dtype=object), state)[t.codes[labelled]]
    else:
        y = scaled_target(rows.numbers(state.label)[labelled], state)
    keep = scorable(y, state)
    return {"x_num": x_num[keep], "x_cat": x_cat[keep], "y": y[keep]}, np.flatnonzero(labelled)[keep]


# ---------------------------------------------------------------- the same on one pandas batch


def add_split_column(df: pd.DataFrame, valid: float, test: float, seed: int) -> pd.DataFrame:
    """Tag each row with its split code (app/data/split.py)."""
    df = df.copy()
    df[SPLIT_COLUMN] = split_codes(RowValues(df), valid, test, seed)
    return df


def partial_stats_batch(df: pd.DataFrame, kinds: dict[str, str], label: str,
                        train_mask: np.ndarray | None = None, sample_rows: int = 0,
                        max_categories: int = preprocess.DEFAULT_MAX_CATEGORIES) -> pd.DataFrame:
    """One row holding the stats of the batch's training rows as JSON, and (`sample_rows`
    > 0) this batch's candidates for the seeded sample: pass 1's summary of a pandas batch."""
    rows = RowValues(df)
    stats = preprocess.partial_stats(rows, kinds, label, train_mask, max_categories)
    sample = preprocess.sample_candidates(rows, kinds, label, sample_rows, train_mask) if sample_rows else \
        np.zeros((0, 0))
    return pd.DataFrame({"stats": [json.dumps(stats)], "sample": [sample.tobytes()],
                         "sample_columns": [sample.shape[1]]})


def transform_batch(df: pd.DataFrame, state_json: str, split: int | None) -> dict[str, np.ndarray]:
    """Keep one split's labelled rows (all with `split` None); return model-ready arrays
    (a Ray Data batch function over raw rows, as pandas)."""
    state = PreprocessState.from_json(state_json)
    if split is not None:
        df = df[df[SPLIT_COLUMN] == split]
    df = df[df[state.label].notna()]
    out = transform(df, state)
    keep = scorable(out["y"], state)
    return {k: v[keep] for k, v in out.items()} if not keep.all() else out
