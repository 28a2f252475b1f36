"""The data step's per-batch work on Arrow tables (app/data/split.py `RowValues`) gives
exactly what the pandas formulas give: the same split as the pandas formula over canonical
values, the same stats, the same model-ready arrays. No Ray."""

from __future__ import annotations

import datetime
import decimal
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from app.data import preprocess as pp
from app.data.prepare import PassOne, merge_candidates, model_ready, tag_piece, transform_batch
from app.data.sources import Piece, column_types, resolve
from app.data.split import SPLIT_COLUMN, RowValues, assign_split
from app.data.transform import MISSING, PreprocessState, category_strings
from tests.unit.test_preprocess import fit_stats


def old_uniforms(df: pd.DataFrame, seed: int) -> np.ndarray:
    """The row hash of the split as it was computed before: pandas over canonical values."""
    columns = {}
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            columns[name] = col.to_numpy(np.float64, na_value=np.nan)
        else:
            columns[name] = category_strings(col).to_numpy(object)
    key = f"{seed & 0xFFFFFFFFFFFFFFFF:016x}"
    hashes = pd.util.hash_pandas_object(pd.DataFrame(columns), index=False, hash_key=key).to_numpy(np.uint64)
    return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def odd_table(n: int, rng: np.random.Generator) -> pa.Table:
    """Every kind of column a file may hold, with gaps."""
    def gaps(values):
        return pa.array([None if m else v for v, m in zip(values, rng.random(n) < 0.2)])

    return pa.table({
        "f": gaps(rng.normal(size=n).round(2).tolist()),
        "i": gaps(rng.integers(-5, 5, n).tolist()),
        "big": pa.array(rng.integers(-2**62, 2**62, n)),
        "s": gaps(rng.choice(["a", "b", "ß", "", "1", "1.0", "nan", MISSING], n).tolist()),
        "b": gaps((rng.random(n) < 0.5).tolist()),
        "nothing": pa.nulls(n),
        "dec": gaps([decimal.Decimal("1.50"), decimal.Decimal(2)] * (n // 2) + [decimal.Decimal(3)] * (n % 2)),
        "ts": gaps([datetime.datetime(2020, 1, 1 + i % 5) for i in range(n)]),
        "dict": pa.array(rng.choice(["x", "y", "z"], n)).dictionary_encode(),
        # unsigned indices, with gaps (Polars writes its categoricals so)
        "udict": pa.DictionaryArray.from_arrays(gaps(rng.integers(0, 3, n).tolist()).cast(pa.uint32()),
                                                pa.array(["p", "q", "r"])),
        "f32": pa.array(rng.normal(size=n).astype(np.float32)),
        "nan": pa.array(np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n))),
        "label": gaps(rng.choice(["yes", "no", "maybe"], n).tolist()),
    })


def test_the_split_is_the_one_of_earlier_versions_whether_rows_come_as_arrow_or_pandas():
    rng = np.random.default_rng(0)
    for _ in range(40):
        t = odd_table(int(rng.integers(1, 200)), rng)
        df = t.to_pandas()
        for seed in (0, 7, -1):
            old = old_uniforms(df, seed)
            assert np.array_equal(RowValues(t).uniforms(seed), old)
            assert np.array_equal(RowValues(df).uniforms(seed), old)
            assert np.array_equal(RowValues(t).uniforms(seed, ["s", "f", "b"]), old_uniforms(df[["s", "f", "b"]], seed))
        codes = assign_split(t, 0.2, 0.1, 0)
        assert np.array_equal(codes, assign_split(df, 0.2, 0.1, 0))


def test_a_pandas_frame_with_mixed_values_splits_as_before():
    df = pd.DataFrame({"m": [1, "1", 2.5, None, True, "x"], "n": [1.0, 2.0, None, 4.0, 5.0, 6.0]})
    assert np.array_equal(RowValues(df).uniforms(3), old_uniforms(df, 3))


KINDS = {"f": "numeric", "i": "numeric", "dec": "numeric", "nan": "numeric", "s": "categorical",
         "b": "categorical", "dict": "categorical", "udict": "categorical", "big": "categorical", "nothing": "categorical"}


def test_stats_of_an_arrow_batch_equal_those_of_the_same_rows_in_pandas():
    rng = np.random.default_rng(1)
    for _ in range(20):
        t = odd_table(int(rng.integers(1, 300)), rng)
        train = rng.random(t.num_rows) < 0.7
        for keep in (2, 100):
            arrow = pp.partial_stats(t, KINDS, "label", train, max_categories=keep)
            pandas = pp.partial_stats(t.to_pandas(), KINDS, "label", train, max_categories=keep)
            assert json.dumps(arrow, sort_keys=True) == json.dumps(pandas, sort_keys=True)


def fitted_state(t: pa.Table, task: str) -> PreprocessState:
    stats = pp.merge_stats([pp.partial_stats(t, KINDS, "label")])
    state, _ = fit_stats(stats, KINDS, task=task, label_type="string" if task == "classification" else "double")
    pp.fit_numeric_scaling(state, pp.SampleMerger(100).result([c.name for c in state.numeric]), "standard", 8)
    return PreprocessState.from_json(state.to_json())


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_model_ready_arrays_from_arrow_equal_transform_batch_in_pandas(task):
    rng = np.random.default_rng(2)
    fit_on = odd_table(300, rng)
    if task == "regression":
        fit_on = fit_on.set_column(fit_on.schema.get_field_index("label"), "label", pa.array(rng.normal(size=300)))
    state = fitted_state(fit_on, task)
    for _ in range(10):
        t = odd_table(int(rng.integers(1, 200)), rng)  # unseen categories and classes ("maybe") among them
        if task == "regression":
            y = np.where(rng.random(t.num_rows) < 0.1, np.inf, rng.normal(size=t.num_rows))
            t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(y, mask=rng.random(len(y)) < 0.1))
        arrays, taken = model_ready(RowValues(t), state)
        expected = transform_batch(t.to_pandas(), state.to_json(), None)
        for key in ("x_num", "x_cat", "y"):
            assert np.array_equal(arrays[key], expected[key]), key
        assert len(taken) == len(expected["y"])


def test_pass_one_keeps_each_row_once_with_its_split(tmp_path):
    rng = np.random.default_rng(3)
    t = odd_table(500, rng).drop_columns(["dec", "ts"])  # CSV has no such types
    path = tmp_path / "d.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(t, path)
    source = resolve(str(path), "data.train")
    kinds = {k: v for k, v in KINDS.items() if k in t.column_names}
    plan = PassOne(0.2, 0.1, 0, kinds, "label", summarise=True, max_categories=10, sample_rows=50)
    types = column_types(kinds, "label", pa.string())
    kept, test, info, candidates = tag_piece(source, Piece(str(path)), types, plan)
    # the split hashes the columns the model reads, as they are read, in the file's order, and nothing else
    read = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        strings_can_be_null=True, column_types=types,
        include_columns=[c for c in t.column_names if c in types])).to_pandas()  # in the file's order
    codes = assign_split(read, 0.2, 0.1, 0)
    assert kept.column(SPLIT_COLUMN).to_pylist() == [c for c in codes.tolist() if c != 2]
    assert kept.column_names == [*kinds, "label", SPLIT_COLUMN]
    assert test.num_rows == (codes == 2).sum() and test.column_names == read.columns.tolist()
    assert info["quotes"] is None and info["stats"]["rows"] == int(((codes == 0) & read["label"].notna()).sum())
    assert len(candidates) == 50 and candidates.shape[1] == 1 + list(kinds.values()).count("numeric")


def test_the_most_frequent_categories_are_kept_ties_by_name():
    rng = np.random.default_rng(4)
    names = [f"{c}{i}" for i, c in enumerate(rng.choice(list("abcßé数"), 3000))]
    counts = pd.Series(rng.integers(1, 4, len(names)), index=pd.Index(names, dtype=object))
    counts[MISSING] = 5
    for keep in (1, 10, 500, 2999):
        top, cut = pp._top_counts(counts, keep)
        others = counts.drop(MISSING)
        expected = others.sort_index(kind="stable").sort_values(ascending=False, kind="stable").iloc[:keep]
        assert cut and set(top.index) == set(expected.index) | {MISSING}


def test_the_sample_is_the_same_whatever_the_order_of_the_batches():
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"a": rng.normal(size=3000).round(1), "b": rng.integers(0, 3, 3000).astype(float),
                       "label": rng.choice(["p", "q"], 3000)})
    kinds = {"a": "numeric", "b": "numeric"}
    batches = [df.iloc[i::4] for i in range(4)]
    candidates = [pp.sample_candidates(b, kinds, "label", 200) for b in batches]
    results = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        merger = pp.SampleMerger(200)
        for i in order:
            merger.add(candidates[i])
        results.append(merger.result(["a", "b"]))
    pd.testing.assert_frame_equal(results[0], results[1])
    # merged in a tree, as the data step's tasks merge the pieces' candidates on a cluster
    tree = pp.SampleMerger(200)
    tree.add(merge_candidates(200, merge_candidates(200, *candidates[:3]), merge_candidates(200, candidates[3])))
    pd.testing.assert_frame_equal(tree.result(["a", "b"]), results[0])
    # the 200 rows with the smallest hash among all candidates, as a full sort picks them
    rows = np.concatenate(candidates)
    order = np.lexsort(tuple(rows[:, c] for c in range(rows.shape[1] - 1, -1, -1)))
    assert np.array_equal(results[0].to_numpy(), rows[order[:200], 1:])


def test_embedding_bins_are_those_of_rtdl_num_embeddings():
    import warnings

    import torch
    from rtdl_num_embeddings import compute_bins

    rng = np.random.default_rng(6)
    x = np.column_stack([rng.normal(size=999), rng.integers(0, 3, 999), rng.exponential(size=999).round(1)])
    for n_bins in (2, 7, 48):
        mine = pp.embedding_bins(x, n_bins)
        for j, column in enumerate(x.T.astype(np.float32)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = compute_bins(torch.from_numpy(column[:, None].copy()), n_bins=n_bins)[0].tolist()
            assert mine[j] == expected
