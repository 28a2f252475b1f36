"""Greedy ensemble selection (app/ensemble.py) and the trees' view of the prepared arrays
(app/data/transform.py `tree_inputs`), on data whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState, tree_feature_types, tree_inputs
from app.ensemble import loss, mixture, select
from app.metrics import softmax


def state(task: str = "classification") -> PreprocessState:
    return PreprocessState(label="y", task=task, numeric=[NumericColumn("a", 0.0, 1.0, True), NumericColumn("b", 0.0, 1.0, False)],
                           categorical=[CategoricalColumn("c", ["p", "q"])], classes=["n", "y"] if task != "regression" else [])


def test_two_members_that_err_on_different_rows_both_get_weight_and_beat_each_alone():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    right = np.where(y[:, None] == np.arange(2), 2.0, -2.0)  # confident and right
    wrong_half = np.arange(2000) % 2 == 0
    a, b = right.copy(), right.copy()
    a[wrong_half] *= -1  # a errs on even rows, b on odd ones: their average is unsure, never wrong
    b[~wrong_half] *= -1
    weights, path = select({"a": a, "b": b}, y, state(), rounds=10)
    assert weights["a"] > 0 and weights["b"] > 0 and sum(weights.values()) == pytest.approx(1.0)
    alone = min(loss(softmax(o), y, True) for o in (a, b))
    assert path[-1] < alone
    assert loss(softmax(mixture({"a": a, "b": b}, weights, state())), y, True) == pytest.approx(path[-1])


def test_a_member_that_only_hurts_weighs_nothing_and_the_path_never_ends_above_the_best_member():
    rng = np.random.default_rng(1)
    y = rng.normal(size=500)
    good, noise = y + 0.1 * rng.normal(size=500), rng.normal(size=500) * 3
    weights, path = select({"noise": noise, "good": good}, y, state("regression"), rounds=25)
    assert weights == {"noise": 0.0, "good": 1.0}
    assert path[-1] == pytest.approx(np.mean((good - y) ** 2))
    assert path[-1] == min(path)


def test_trees_read_missing_numbers_as_missing_and_categories_as_codes():
    s = state()
    x_num = np.array([[0.5, 1.0, 0.0], [0.0, 2.0, 1.0]], dtype=np.float32)  # a, b, then a's missing indicator
    x_cat = np.array([[1], [0]], dtype=np.int64)  # q... "p" is 1, unknown 0
    out = tree_inputs(x_num, x_cat, s)
    assert out.shape == (2, 3)
    assert out[0, 0] == 0.5 and np.isnan(out[1, 0])  # a was missing in row 2: NaN, not its centre
    assert out[:, 1].tolist() == [1.0, 2.0] and out[:, 2].tolist() == [1.0, 0.0]
    assert tree_feature_types(s) == ["q", "q", "c"]
