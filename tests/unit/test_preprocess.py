import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from app.config import DataConfig, PreprocessConfig
from app.data import preprocess as pp
from app.data.prepare import partial_stats_batch
from app.data.sources import Inputs
from app.data.split import TEST, TRAIN, VALID, assign_split
from app.data.transform import MISSING, PreprocessState, transform
from app.errors import UserError

KINDS = {"a": "numeric", "b": "numeric", "c": "categorical", "d": "categorical"}


def frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "a": rng.normal(5, 2, n),
        "b": rng.integers(0, 10, n).astype(float),
        "c": rng.choice(["x", "y", "z"], n).astype(object),
        "d": rng.choice([2007, 2008], n),
        "label": rng.choice(["no", "yes"], n).astype(object),
    })
    df.loc[::10, "a"] = np.nan
    df.loc[::7, "c"] = None
    return df


def fit_stats(stats, kinds, *, task="auto", min_count=1, types=None, label_type="string", categorical=(),
              max_categories=10_000):
    """fit_preprocessor on merged stats, with the config sections and inputs of a run."""
    return pp.fit_preprocessor(
        stats, data=DataConfig(train="train.csv", label="label", task=task, categorical=list(categorical),
                               max_categories=max_categories),
        preprocess=PreprocessConfig(min_category_count=min_count, missing_indicators=True),
        inputs=Inputs(train=None, test=None, kinds=kinds, input_types=types or {}, column_types={},
                      label_type=label_type))


def fit(df, kinds=KINDS, task="auto", min_count=1, batches=3, label_type=None, max_categories=10_000):
    parts = [json.loads(partial_stats_batch(chunk, kinds, "label", max_categories=max_categories)["stats"][0])
             for chunk in (df.iloc[i] for i in np.array_split(np.arange(len(df)), batches))]
    types = {k: "x" for k in kinds}
    label_type = label_type or str(pa.Schema.from_pandas(df[["label"]]).field("label").type)
    return fit_stats(pp.merge_stats(parts, max_categories=max_categories), kinds, task=task, min_count=min_count,
                     types=types, label_type=label_type, max_categories=max_categories)


def test_fit_matches_pandas_and_merges_batches_exactly():
    df = frame()
    state, warnings = fit(df)
    assert warnings == []
    a = state.numeric[0]
    assert a.name == "a" and a.indicator  # had gaps
    assert a.mean == pytest.approx(df["a"].mean(), rel=1e-12)
    assert a.std == pytest.approx(df["a"].std(ddof=0), rel=1e-12)
    assert not state.numeric[1].indicator  # no gaps in b
    assert state.categorical[0].categories == sorted(["x", "y", "z", MISSING])
    assert state.categorical[1].categories == ["2007", "2008"]
    assert state.task == "classification" and state.classes == ["no", "yes"]
    one_batch, _ = fit(df, batches=1)
    assert one_batch.numeric[0].std == pytest.approx(a.std, rel=1e-12)


def test_transform_imputes_scales_encodes():
    df = frame()
    state, _ = fit(df)
    out = transform(df, state)
    assert out["x_num"].dtype == np.float32 and out["x_num"].shape == (len(df), 3)  # a, b, a_missing
    assert not np.isnan(out["x_num"]).any()
    present = df["a"].notna().to_numpy()
    assert abs(out["x_num"][present, 0].mean()) < 0.1
    np.testing.assert_array_equal(out["x_num"][:, 2], ~present)
    assert np.all(out["x_num"][~present, 0] == 0)  # mean-imputed, i.e. 0 after scaling
    assert out["x_cat"].dtype == np.int64 and out["x_cat"].min() >= 1  # all seen in training
    missing_code = state.categorical[0].categories.index(MISSING) + 1
    assert np.all(out["x_cat"][df["c"].isna().to_numpy(), 0] == missing_code)
    np.testing.assert_array_equal(out["y"], (df["label"] == "yes").astype(int))


def test_unseen_and_rare_categories_go_to_the_unknown_bucket():
    df = frame()
    state, _ = fit(df)
    new = df.head(3).copy()
    new["c"] = ["never-seen", "x", None]
    new["d"] = [1999, 2007.0, "2008"]  # numbers and text of the same category agree
    codes = transform(new, state, with_label=False)["x_cat"]
    cats = state.categorical
    assert codes[0, 0] == 0
    assert codes[1, 0] == cats[0].categories.index("x") + 1
    assert codes[2, 0] == cats[0].categories.index(MISSING) + 1
    assert list(codes[:, 1]) == [0, 1, 2]

    df2 = frame()
    df2.loc[0, "c"] = "once"
    rare, _ = fit(df2, min_count=2)
    assert "once" not in rare.categorical[0].categories


def test_nan_in_unseen_numeric_is_imputed_without_indicator():
    df = frame()
    state, _ = fit(df)
    new = df.head(2).copy()
    new["b"] = [np.nan, "3"]  # b had no gaps in training: no indicator column
    x = transform(new, state, with_label=False)["x_num"]
    assert x[0, 1] == 0.0
    assert x[1, 1] == pytest.approx((3 - state.numeric[1].mean) / state.numeric[1].std, rel=1e-6)


def test_state_json_round_trip_is_exact():
    state, _ = fit(frame())
    again = PreprocessState.from_json(state.to_json())
    assert again == state
    df = frame(50, seed=3)
    a, b = transform(df, state), transform(df, again)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_task_detection_rule():
    df = frame()
    df["label"] = np.arange(len(df)) % 3  # integer, 3 values -> classes
    assert fit(df)[0].task == "classification"
    df["label"] = np.linspace(0, 1, len(df))  # float -> regression
    state = fit(df)[0]
    assert state.task == "regression"
    assert state.target_mean == pytest.approx(0.5)
    df["label"] = np.arange(len(df))  # integer, 200 values -> regression
    assert fit(df)[0].task == "regression"
    df["label"] = np.arange(len(df)) % 3.0
    df.loc[5, "label"] = np.nan  # read as int64 with a gap: pandas sees floats
    assert fit(df, label_type="int64")[0].task == "classification"
    assert fit(df, label_type="double")[0].task == "regression"


def test_single_class_is_refused():
    df = frame()
    df["label"] = "yes"
    with pytest.raises(UserError, match="single class"):
        fit(df)


def test_numeric_looking_text_column_is_refused_with_a_sample():
    df = frame()
    df["c"] = [str(i) for i in range(len(df))]
    df.loc[17, "c"] = "oops"
    with pytest.raises(UserError, match=r"column 'c' looks numeric .* such as 'oops'.*data.categorical"):
        fit(df)


def test_all_missing_column_is_dropped_with_a_warning():
    df = frame()
    df["b"] = np.nan
    state, warnings = fit(df)
    assert "b" not in state.features and state.dropped == ["b"]
    assert any("b" in w and "dropped" in w for w in warnings)


def test_rows_without_label_are_not_used():
    df = frame()
    df.loc[:9, "label"] = None
    state, warnings = fit(df)
    assert state.train_rows == len(df) - 10
    assert any("10 training row(s)" in w for w in warnings)


def test_column_kinds_from_schema():
    schema = pa.schema([("n", pa.float64()), ("i", pa.int64()), ("s", pa.string()), ("flag", pa.bool_()),
                        ("year", pa.int64()), ("id", pa.int64()), ("label", pa.string())])
    def data(**keys):
        return DataConfig(train="train.csv", **({"label": "label"} | keys))

    kinds = pp.column_kinds(schema, data(categorical=["year"], drop=["id"]))
    assert kinds == {"n": "numeric", "i": "numeric", "s": "categorical", "flag": "categorical",
                     "year": "categorical"}
    with pytest.raises(UserError, match=r"data.label: column 'target' is not in data.train \(train.csv\)"):
        pp.column_kinds(schema, data(label="target"))
    with pytest.raises(UserError, match="data.features: column.*nope"):
        pp.column_kinds(schema, data(features=["nope"]))
    with pytest.raises(UserError, match="column 'ts' has type timestamp"):
        pp.column_kinds(pa.schema([("ts", pa.timestamp("s")), ("label", pa.string())]), data())


def test_split_does_not_depend_on_how_values_were_read():
    df = frame(500)
    df["d"] = df["d"].astype("int64")
    as_floats = df.assign(d=df["d"].astype(float), b=df["b"].astype("float32").astype(float))
    arrow = df.astype({"c": "string[pyarrow]", "d": "int64[pyarrow]"})
    codes = assign_split(df, 0.2, 0.1, seed=0)
    np.testing.assert_array_equal(assign_split(as_floats, 0.2, 0.1, seed=0), codes)
    np.testing.assert_array_equal(assign_split(arrow, 0.2, 0.1, seed=0), codes)


def test_split_is_deterministic_and_order_free():
    df = frame(2000)
    codes = assign_split(df, 0.2, 0.1, seed=0)
    shares = np.bincount(codes, minlength=3) / len(df)
    assert shares[VALID] == pytest.approx(0.2, abs=0.03) and shares[TEST] == pytest.approx(0.1, abs=0.03)
    assert shares[TRAIN] == pytest.approx(0.7, abs=0.03)
    shuffled = df.sample(frac=1, random_state=1)
    np.testing.assert_array_equal(assign_split(shuffled, 0.2, 0.1, seed=0), codes[shuffled.index.to_numpy()])
    assert (assign_split(df, 0.2, 0.1, seed=1) != codes).mean() > 0.2
    assert not (assign_split(df, 0.2, 0.0, seed=0) == TEST).any()


def test_declared_categorical_column_is_not_refused_as_numeric_looking():
    df = frame()
    df["c"] = [str(i % 5) for i in range(len(df))]
    df.loc[17, "c"] = "oops"
    parts = [json.loads(partial_stats_batch(df, KINDS, "label")["stats"][0])]
    state, _ = fit_stats(pp.merge_stats(parts), KINDS, categorical={"c"})
    assert "oops" in state.categorical[0].categories


def test_text_with_gaps_as_object_dtype_is_checked_too():
    # Ray Data hands Arrow text with nulls to pandas as object dtype.
    df = frame()
    df["c"] = pd.Series([str(i) for i in range(len(df))], dtype=object)
    df.loc[3, "c"] = None
    df.loc[17, "c"] = "oops"
    with pytest.raises(UserError, match=r"column 'c' looks numeric .* such as 'oops'"):
        fit(df)


def test_arrow_backed_text_is_checked_too():
    df = frame()
    df["c"] = pd.Series([str(i) for i in range(len(df))], dtype="string[pyarrow]")
    df.loc[17, "c"] = "oops"
    with pytest.raises(UserError, match=r"column 'c' looks numeric .* such as 'oops'"):
        fit(df)


# ---------------------------------------------------------------- odd values


def test_infinite_feature_values_are_treated_as_missing_with_a_warning():
    df = frame()
    df["b"] = df["b"].astype(float)
    df.loc[[3, 4], "b"] = [np.inf, -np.inf]
    state, warnings = fit(df)
    b = state.numeric[1]
    finite = df["b"][np.isfinite(df["b"])]
    assert b.mean == pytest.approx(finite.mean(), rel=1e-12) and b.std == pytest.approx(finite.std(ddof=0), rel=1e-12)
    assert b.indicator  # the infinite values count as gaps
    assert [w for w in warnings if "'b'" in w] == [("column 'b' has 2 infinite value(s) in the training split; "
                                                    "they are treated as missing")]
    new = df.head(3).assign(b=[np.inf, -np.inf, np.nan])
    x = transform(new, state, with_label=False)["x_num"]
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x[:, 1], [0.0, 0.0, 0.0])  # the centre, as a missing value
    np.testing.assert_array_equal(x[:, -1], [1.0, 1.0, 1.0])  # and flagged missing


def test_infinite_regression_label_is_refused_naming_the_column_and_file():
    df = frame()
    df["label"] = np.linspace(0, 1, len(df))
    df.loc[7, "label"] = np.inf
    with pytest.raises(UserError, match=r"data.label: 'label' has 1 infinite value\(s\) in data.train \(train.csv\)"):
        fit(df)
    df.loc[7, "label"] = 0.5  # and in a row of another split: still refused
    rows = df.assign(label=df["label"].where(df.index != 9, -np.inf))
    stats = json.loads(partial_stats_batch(rows, KINDS, "label", train_mask=rows.index != 9)["stats"][0])
    with pytest.raises(UserError, match="infinite"):
        fit_stats(pp.merge_stats([stats]), KINDS, label_type="double")


def test_values_too_large_to_scale_are_refused_naming_the_column():
    df = frame()
    df["a"] = df["a"] * 1e300
    with pytest.raises(UserError, match=r"data.train \(train.csv\): column 'a' has values too large"):
        fit(df)


def test_numbers_stored_as_text_are_refused_naming_the_column():
    # Parquet keeps the writer's types: a numeric column written as strings would otherwise
    # become a categorical column with one category per number.
    df = frame()
    df["c"] = pd.Series([str(v) for v in np.round(df["a"].fillna(0), 3)], dtype="string[pyarrow]")
    with pytest.raises(UserError, match=r"column 'c' holds only numbers but is stored as text.*data.categorical"):
        fit(df)
    state, _ = fit_stats(pp.merge_stats([json.loads(partial_stats_batch(df, KINDS, "label")["stats"][0])]),
                         KINDS, categorical={"c"})  # declared categorical: accepted as categories
    assert len(state.categorical[0].categories) > 100


def test_categories_beyond_the_cap_keep_the_most_frequent_and_warn():
    rng = np.random.default_rng(0)
    n = 3000
    df = frame(n)
    # 120 values at most, "id-000" the most frequent, then "id-001", ...: each batch counts them all
    df["c"] = [f"id-{int(v):03d}" for v in (rng.zipf(1.3, n) - 1) % 120]
    state, warnings = fit(df, max_categories=50)
    kept = state.categorical[0].categories
    counts = df["c"].value_counts()
    assert len(kept) == 50
    assert set(kept) == set(counts.index[:50]) or counts.iloc[49] == counts.iloc[50]
    distinct = df["c"].nunique()
    assert [w for w in warnings if "'c'" in w] == [
        (f"column 'c' has {distinct} categories, more than data.max_categories (50): the 50 most frequent are "
         f"kept and the other {distinct - 50} go to the unknown bucket (an identifier belongs in data.drop)")]
    assert not [w for w in warnings if "'d'" in w]  # under the cap: no warning
    codes = transform(df, state, with_label=False)["x_cat"][:, 0]
    assert ((codes == 0) == ~df["c"].isin(kept).to_numpy()).all()


def test_each_batch_reports_a_bounded_number_of_categories():
    df = frame(4000)
    df["c"] = [f"u{i}" for i in range(len(df))]  # an id column: every value distinct
    stats = pp.partial_stats(df, KINDS, "label", max_categories=10)
    assert len(stats["categorical"]["c"]["counts"]) <= 4 * 10
    parts = [pp.partial_stats(df.iloc[i::4], KINDS, "label", max_categories=10) for i in range(4)]
    merged = pp.merge_stats(parts, max_categories=10)
    assert len(merged["categorical"]["c"]["counts"]) <= 2 * 4 * 10
    state, warnings = fit_stats(merged, KINDS, max_categories=10, label_type="string")
    assert len(state.categorical[0].categories) == 10
    # 1,000 distinct per batch: the largest a batch saw (the 4,000 in all were never counted)
    assert [w for w in warnings if "'c'" in w] == [
        ("column 'c' has at least 1000 categories, more than data.max_categories (10): the 10 most frequent "
         "(counted approximately) are kept and the other 990 or more go to the unknown bucket (an identifier "
         "belongs in data.drop)")]
    # two batches of 35 categories each (under 4 x 10), 70 in all (under 8 x 10): counted exactly
    two = [pp.partial_stats(df.iloc[i * 35:(i + 1) * 35], KINDS, "label", max_categories=10) for i in range(2)]
    _, warnings = fit_stats(pp.merge_stats(two, max_categories=10), KINDS, max_categories=10)
    assert next(w for w in warnings if "'c'" in w).startswith("column 'c' has 70 categories, more than")


def test_moments_merge_in_any_order_to_those_of_all_the_values():
    rng = np.random.default_rng(3)
    values = rng.normal(5.0, 3.0, 1000)
    parts = [values[:1], values[1:400], values[400:400], values[400:]]

    def moments(v):
        return len(v), float(v.mean()) if len(v) else 0.0, float(((v - v.mean()) ** 2).sum()) if len(v) else 0.0

    total = (0, 0.0, 0.0)
    for part in reversed(parts):
        total = pp.merge_moments(total, moments(part))
    n, mean, m2 = total
    assert n == 1000 and mean == pytest.approx(values.mean(), rel=1e-12)
    assert m2 == pytest.approx(((values - values.mean()) ** 2).sum(), rel=1e-12)
    assert pp.merge_moments((0, 0.0, 0.0), (0, 0.0, 0.0)) == (0, 0.0, 0.0)


def test_missing_columns_are_refused_in_one_message_naming_where():
    pp.check_columns(["a", "b", "c"], ["c", "a"], "--input x.csv")
    with pytest.raises(UserError, match=r"^--input x.csv: missing feature column\(s\) b, d \(the model reads: a, b, d\)$"):
        pp.check_columns(["a", "c"], ["a", "b", "d"], "--input x.csv", reads=["a", "b", "d"])
    with pytest.raises(UserError, match=r"^data.test t.csv: missing column\(s\) label$"):
        pp.check_columns(["a"], ["label", "a"], "data.test t.csv", what="column(s)")
