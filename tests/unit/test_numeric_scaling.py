"""Quantile scaling, the seeded training sample it is fitted on, and the embedding bins."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from app.data import preprocess as pp
from app.data.prepare import partial_stats_batch
from app.data.transform import PreprocessState, numeric_inputs, quantile_scale
from tests.unit.test_preprocess import fit_stats

KINDS = {"skewed": "numeric", "spiky": "numeric", "c": "categorical"}


def frame(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "skewed": rng.lognormal(0, 1.5, n),  # heavy right tail
        "spiky": np.where(rng.random(n) < 0.6, 0.0, rng.normal(5, 1, n)),  # 60% exact zeros
        "c": rng.choice(["x", "y"], n).astype(object),
        "label": rng.choice(["no", "yes"], n).astype(object),
    })
    df.loc[::9, "skewed"] = np.nan
    return df


def fitted(df, scaling="quantile", sample_rows=100_000, batches=3):
    chunks = [df.iloc[i] for i in np.array_split(np.arange(len(df)), batches)]
    outs = [partial_stats_batch(chunk, KINDS, "label", sample_rows=sample_rows) for chunk in chunks]
    merger = pp.SampleMerger(sample_rows)
    for out in outs:
        merger.add(np.frombuffer(out["sample"][0]).reshape(-1, out["sample_columns"][0]))
    state, _ = fit_stats(pp.merge_stats([json.loads(o["stats"][0]) for o in outs]), KINDS)
    sample = merger.result(["skewed", "spiky"])
    pp.fit_numeric_scaling(state, sample, scaling, n_bins=16)
    return state, sample


def test_quantile_scaling_makes_a_skewed_column_normal():
    df = frame()
    state, _ = fitted(df)
    x = numeric_inputs(df, state)
    present = df["skewed"].notna().to_numpy()
    scaled = x[present, 0]
    assert abs(scaled.mean()) < 0.05 and abs(scaled.std() - 1) < 0.05
    assert stats.kstest(scaled, "norm").statistic < 0.02  # a normal shape, not just moments
    assert (x[~present, 0] == 0).all() and (x[:, 2] == ~present).all()  # missing: centre + indicator
    order = np.argsort(df["skewed"].to_numpy()[present])
    assert (np.diff(scaled[order]) >= 0).all()  # monotone


def test_a_spike_maps_to_the_middle_of_its_levels():
    q = np.array([0.0, 0.0, 0.0, 1.0, 2.0])  # levels 0, 0.25, 0.5, 0.75, 1
    normal = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert quantile_scale(np.array([0.0]), q, normal)[0] == pytest.approx(-1.0)  # level 0.25, mid of 0..0.5
    assert quantile_scale(np.array([-5.0, 9.0]), q, normal).tolist() == [-2.0, 2.0]  # clipped to the ends
    df = frame()
    state, _ = fitted(df)
    zeros = numeric_inputs(df[df["spiky"] == 0], state)[:, 1]
    share = (df["spiky"] == 0).mean()  # about 0.6: the zeros fill levels 0..0.6
    assert zeros[0] == pytest.approx(stats.norm.ppf(share / 2), abs=0.05)


def test_matches_scikit_learns_quantile_transformer_on_a_small_sample():
    from sklearn.preprocessing import QuantileTransformer

    df = frame(300)  # 300 rows: the TabM rule gives only 10 quantile levels
    state, sample = fitted(df)
    assert len(sample) == 300
    reference = QuantileTransformer(n_quantiles=10, output_distribution="normal", subsample=None)
    values = df[["skewed"]].dropna()
    expected = reference.fit(sample[["skewed"]].dropna()).transform(values)[:, 0]
    got = numeric_inputs(df.loc[values.index], state)[:, 0]
    inner = np.abs(expected) < 2.3  # away from the clipped ends, where scikit-learn takes an exact ppf
    np.testing.assert_allclose(got[inner], expected[inner], atol=0.02)
    assert abs(got.std() - expected.std()) < 0.1


def test_repeated_rows_keep_their_share_of_the_sample():
    df = frame(20_000)
    repeated = df.iloc[:6000].copy()
    repeated[:] = df.iloc[[1] * 6000].to_numpy()  # 30% of the rows are one row, repeated
    df = pd.concat([repeated, df.iloc[6000:]], ignore_index=True)
    _, sample = fitted(df, sample_rows=1000, batches=4)
    copies = (sample["spiky"] == df.loc[0, "spiky"]) & (sample["skewed"] == df.loc[0, "skewed"])
    assert not np.isnan(df.loc[0, "skewed"])
    assert 0.25 < copies.mean() < 0.35


def test_sample_does_not_depend_on_the_batch_layout_and_is_bounded():
    df = frame(3000)
    # distinct rows only: which copies of a repeated row are drawn depends on how the
    # copies fall into batches (their share does not, see the next test)
    df["skewed"] = df["skewed"].fillna(pd.Series(np.arange(len(df)) + 1000.0))
    _, one = fitted(df, sample_rows=500, batches=1)
    _, seven = fitted(df, sample_rows=500, batches=7)
    assert len(one) == 500
    pd.testing.assert_frame_equal(one, seven)
    _, everything = fitted(df, sample_rows=10_000, batches=4)
    assert len(everything) == len(df)


def test_standard_scaling_is_kept_and_state_round_trips():
    df = frame()
    state, _ = fitted(df, scaling="standard")
    assert all(c.quantiles is None for c in state.numeric)
    v = df["skewed"].to_numpy()
    present = ~np.isnan(v)
    x = numeric_inputs(df, state)
    np.testing.assert_allclose(x[present, 0], (v[present] - np.nanmean(v)) / np.nanstd(v), rtol=1e-4, atol=1e-5)
    quantile, _ = fitted(df)
    assert PreprocessState.from_json(quantile.to_json()) == quantile


def test_bins_cover_every_model_input_and_are_sorted():
    state, _ = fitted(frame())
    assert len(state.bins) == state.numeric_width == 3  # two columns and one missing indicator
    for edges in state.bins:
        assert len(edges) >= 2 and all(a < b for a, b in zip(edges, edges[1:]))
    assert len(state.bins[0]) == 17  # 16 bins of a continuous column
    assert state.bins[2] == [0.0, 1.0]  # the 0/1 indicator: one bin


def test_a_constant_column_gets_one_unit_bin():
    assert pp.embedding_bins(np.full((50, 1), 3.0), 8) == [[2.5, 3.5]]
