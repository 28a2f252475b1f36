"""Metric sums: merged over any split of the rows they equal a direct computation on all of
them (scikit-learn's), exactly where they can be, and ROC AUC within its stated bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from app.data.transform import PreprocessState
from app.metrics import SAMPLE_POINTS, MetricSums, softmax

CLASSES = PreprocessState(label="y", task="classification", numeric=[], categorical=[], classes=["a", "b", "c"])
BINARY = PreprocessState(label="y", task="classification", numeric=[], categorical=[], classes=["n", "y"])
REGRESSION = PreprocessState(label="y", task="regression", numeric=[], categorical=[], target_mean=50.0,
                             target_std=7.0)


def classification_rows(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.random((n, 1))  # informative, not perfect
    return logits, y


def in_blocks(outputs, y, state, cuts) -> MetricSums:
    total = MetricSums.empty(state)
    for lo, hi in zip([0, *cuts], [*cuts, len(y)]):
        total = total.merge(MetricSums.of(outputs[lo:hi], y[lo:hi], state))
    return total


@pytest.mark.parametrize("state", [CLASSES, BINARY], ids=["3 classes", "2 classes"])
def test_classification_metrics_equal_scikit_learn(state):
    k = len(state.classes)
    logits, y = classification_rows(3000, k)
    sums = in_blocks(logits, y, state, [7, 1000, 1001, 2500])
    got = sums.metrics(state)
    proba = softmax(logits)
    labels = list(range(k))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, proba.argmax(axis=1)), rel=1e-12)
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, proba.argmax(axis=1), average="macro", labels=labels),
                                            rel=1e-12)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=labels), rel=1e-12)
    assert got["loss"] == pytest.approx(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1)).mean(), rel=1e-12)
    exact = skm.roc_auc_score(y, proba[:, 1]) if k == 2 else skm.roc_auc_score(y, proba, multi_class="ovr")
    bound = sums.auc_error_bound()
    assert bound < 1e-3
    assert abs(got["roc_auc"] - exact) <= bound + 1e-12
    assert sums.confusion_matrix(state.classes)["matrix"] == \
        skm.confusion_matrix(y, proba.argmax(axis=1), labels=labels).tolist()


def test_a_class_absent_from_the_rows_has_no_auc_and_f1_counts_it_as_zero():
    logits, y = classification_rows(200, 3)
    keep = y != 2
    got = MetricSums.of(logits[keep], y[keep], CLASSES).metrics(CLASSES)
    assert math.isnan(got["roc_auc"])
    pred = softmax(logits[keep]).argmax(axis=1)
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y[keep], pred, labels=[0, 1, 2], average="macro",
                                                         zero_division=0), rel=1e-12)


def test_confident_scores_still_rank_apart():
    """Probabilities like 0.9999 and 0.999999 fall in different bins (the logit scale)."""
    y = np.array([1, 0] * 500)
    margin = np.where(y == 1, 12.0, 9.0) + np.random.default_rng(1).normal(0, 0.1, len(y))
    logits = np.stack([np.zeros(len(y)), margin], axis=1)
    sums = MetricSums.of(logits, y, BINARY)
    assert sums.metrics(BINARY)["roc_auc"] == pytest.approx(1.0, abs=1e-9) and sums.auc_error_bound() == 0.0


def test_regression_metrics_equal_scikit_learn_and_numpy():
    rng = np.random.default_rng(2)
    y_std = rng.normal(size=5000)
    pred_std = y_std + rng.normal(0, 0.3, 5000)
    sums = in_blocks(pred_std, y_std, REGRESSION, [1, 2, 2000, 4999])
    got = sums.metrics(REGRESSION)
    actual, pred = y_std * 7.0 + 50.0, pred_std * 7.0 + 50.0
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(actual, pred)), rel=1e-10)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(actual, pred), rel=1e-10)
    assert got["r2"] == pytest.approx(skm.r2_score(actual, pred), rel=1e-10)
    assert got["loss"] == pytest.approx(np.mean((pred_std - y_std) ** 2), rel=1e-10)
    residuals = sums.residual_summary()
    r = actual - pred
    assert residuals["mean"] == pytest.approx(r.mean(), abs=1e-10)
    assert residuals["std"] == pytest.approx(r.std(), rel=1e-10)
    assert residuals["max_abs"] == np.abs(r).max()
    assert len(sums.sample()["actual"]) == SAMPLE_POINTS


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=6), st.sampled_from(["classification", "regression"]))
def test_any_split_into_blocks_gives_the_same_result(cuts, task):
    state = CLASSES if task == "classification" else REGRESSION
    if task == "classification":
        outputs, y = classification_rows(400, 3, seed=3)
    else:
        rng = np.random.default_rng(3)
        y = rng.normal(size=400)
        outputs = y + rng.normal(0, 0.5, 400)
    whole = MetricSums.of(outputs, y, state)
    split = in_blocks(outputs, y, state, sorted(cuts))
    for key, value in whole.metrics(state).items():
        assert split.metrics(state)[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    if task == "regression":  # the sample is chosen by value, not by position
        assert split.sample() == whole.sample()
        assert split.residual_summary() == pytest.approx(whole.residual_summary(), rel=1e-9)


def test_no_rows_no_metrics():
    assert MetricSums.of(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), CLASSES).metrics(CLASSES) == {}
