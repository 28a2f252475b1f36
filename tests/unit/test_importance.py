"""Permutation feature importance (app/importance.py) without Ray: on tables whose truth is
known by construction (the label depends on one column only; the others are pure noise),
with small networks trained here in plain torch, the driving column ranks first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import app
from app import checkpoint as ckpt
from app.api import Model
from app.config import ModelConfig
from app.data.transform import transform
from app.errors import UserError
from app.importance import input_columns, permutation_importance, sample_rows
from app.predictor import Predictor
from app.report import render
from tests.unit.test_cli_errors import assert_bad_input
from tests.unit.test_scoring_path import fitted_checkpoint

FEATURES = {"x", "c", "noise_x", "noise_c"}


def known_table(task: str, rows: int, seed: int) -> pd.DataFrame:
    """Classification: the label is the sign of numeric `x` (missing in a tenth of the rows:
    then "hi"). Regression: the label is a value per category of `c`, plus a little noise. In
    each, every other column is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    x[rng.random(rows) < 0.1] = np.nan
    c = rng.choice(["a", "b", "c", "d"], rows)
    table = pd.DataFrame({"x": x, "c": c, "noise_x": rng.normal(size=rows), "noise_c": rng.choice(["p", "q"], rows)})
    if task == "classification":
        table["y"] = np.where(np.nan_to_num(x, nan=1.0) > 0, "hi", "lo")
    else:
        table["y"] = pd.Series(c).map({"a": -2.0, "b": 0.0, "c": 1.0, "d": 3.0}) + 0.1 * rng.normal(size=rows)
    return table


def trained_checkpoint(folder: Path, task: str) -> Path:
    """A checkpoint of an MLP trained here (full batch, plain torch) on `known_table`."""
    table = known_table(task, 600, seed=1)
    predictor = Predictor.from_checkpoint(fitted_checkpoint(folder, table, "y"))
    arrays = {k: torch.from_numpy(v) for k, v in transform(table, predictor.state).items()}
    net = predictor.model.train()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    torch.manual_seed(0)
    for _ in range(150):
        opt.zero_grad()
        out = net(arrays["x_num"], arrays["x_cat"])
        loss = torch.nn.functional.cross_entropy(out, arrays["y"]) if task == "classification" \
            else torch.nn.functional.mse_loss(out, arrays["y"])
        loss.backward()
        opt.step()
    return ckpt.write_checkpoint(folder / "trained", model=net.eval(), optimizer=opt,
                                 scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0),
                                 state=predictor.state, model_cfg=ModelConfig(kind="mlp", hidden=[16]),
                                 train_state={"epoch": 1, "progress": {}})


@pytest.fixture(scope="module", params=["classification", "regression"])
def trained(request, tmp_path_factory):
    task = request.param
    path = trained_checkpoint(tmp_path_factory.mktemp(task), task)
    return {"task": task, "checkpoint": str(path), "predictor": Predictor.from_checkpoint(path),
            "driver": "x" if task == "classification" else "c"}


def assert_driver_first(ranking: list[dict], driver: str) -> None:
    assert {r["feature"] for r in ranking} == FEATURES
    assert ranking[0]["feature"] == driver, ranking
    assert [r["importance"] for r in ranking] == sorted((r["importance"] for r in ranking), reverse=True)
    assert all(r["stddev"] >= 0 for r in ranking)
    # well clear of every noise column, not a tie won by chance
    assert ranking[0]["importance"] > 0.3 and all(r["importance"] < 0.1 for r in ranking[1:]), ranking


def test_the_driving_column_ranks_first(trained):
    holdout = known_table(trained["task"], 400, seed=2)
    ranking = permutation_importance(trained["predictor"], holdout, repeats=3, seed=0)
    assert_driver_first(ranking, trained["driver"])
    assert ranking == permutation_importance(trained["predictor"], holdout, repeats=3, seed=0)  # seeded


def test_model_feature_importance_is_a_dataframe_of_the_same_ranking(trained):
    holdout = known_table(trained["task"], 400, seed=2)
    model = Model(trained["predictor"], trained["checkpoint"])
    table = model.feature_importance(holdout, repeats=3, max_rows=300)
    assert list(table.columns) == ["feature", "importance", "stddev"]
    assert_driver_first(table.to_dict("records"), trained["driver"])
    sample = sample_rows(holdout, trained["predictor"].state, 300, 0)
    assert table.to_dict("records") == permutation_importance(trained["predictor"], sample, repeats=3, seed=0)
    with pytest.raises(UserError, match="feature_importance: no label column 'y'"):
        model.feature_importance(holdout.drop(columns="y"))
    with pytest.raises(UserError, match="repeats: expected a whole number >= 1, got 0"):
        model.feature_importance(holdout, repeats=0)


def test_shuffling_a_raw_column_equals_shuffling_its_model_inputs(trained):
    """The group a feature stands for: a numeric column with its missing indicator moves as one."""
    predictor, holdout = trained["predictor"], known_table(trained["task"], 50, seed=3)
    state, order = predictor.state, np.random.default_rng(0).permutation(50)
    base = transform(holdout, state, with_label=False)
    for index, name in enumerate(state.features):
        shuffled = holdout.copy()
        shuffled[name] = holdout[name].to_numpy()[order]
        expected = transform(shuffled, state, with_label=False)
        num, cat = input_columns(state, index)
        x_num, x_cat = base["x_num"].copy(), base["x_cat"].copy()
        x_num[:, num], x_cat[:, cat] = base["x_num"][order][:, num], base["x_cat"][order][:, cat]
        np.testing.assert_array_equal(x_num, expected["x_num"])
        np.testing.assert_array_equal(x_cat, expected["x_cat"])
    assert len(input_columns(state, state.features.index("x"))[0]) == 2  # its indicator too


def test_the_sample_is_bounded_and_depends_on_the_rows_not_their_order(trained):
    state, holdout = trained["predictor"].state, known_table(trained["task"], 200, seed=4)
    holdout.loc[::7, "y"] = None  # unlabelled rows are never sampled
    sample = sample_rows(holdout, state, 60, seed=5)
    assert len(sample) == 60 and sample["y"].notna().all()
    shuffled = holdout.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(sample_rows(shuffled, state, 60, seed=5), sample)
    assert not sample.equals(sample_rows(holdout, state, 60, seed=6))


def test_evaluate_a_dataframe_with_importance_in_this_process(trained, tmp_path):
    """A DataFrame is evaluated here (no Ray): the JSON holds the ranking and what it was computed on."""
    holdout = known_table(trained["task"], 300, seed=2)
    result = app.evaluate(trained["checkpoint"], holdout, importance=True, repeats=2, max_rows=250,
                          output=str(tmp_path / "out.json"))
    assert result["importance"] == {"metric": "log_loss" if trained["task"] == "classification" else "rmse",
                                    "rows": 250, "repeats": 2, "seed": 0}
    assert_driver_first(result["feature_importance"], trained["driver"])
    with pytest.raises(UserError, match="--max-rows: expected a whole number >= 1, got 0"):
        app.evaluate(trained["checkpoint"], holdout, importance=True, max_rows=0)


def test_importance_flags_refused_on_the_command_line(trained, tmp_path, capsys, ray_must_not_start):
    data = tmp_path / "unlabelled.csv"
    known_table(trained["task"], 20, seed=2).drop(columns="y").to_csv(data, index=False)
    assert_bad_input(["evaluate", "--checkpoint", trained["checkpoint"], "--data", str(data), "--importance"],
                     capsys, "--data", "no label column 'y'")
    assert_bad_input(["evaluate", "--checkpoint", trained["checkpoint"], "--data", str(data), "--max-rows", "10"],
                     capsys, "--max-rows: only with --importance")


def test_the_report_draws_importance_with_error_bars():
    ranking = [{"feature": "x", "importance": 0.5, "stddev": 0.05}, {"feature": "noise", "importance": 0.0,
                                                                       "stddev": 0.01}]
    metrics = {"task": "classification", "test": {"accuracy": 0.9}, "feature_importance": ranking,
               "importance": {"metric": "log_loss"}}
    page = render("runs/r", metrics, baselines={}, leaderboard=None, config=None)
    assert "<h2>Feature importance</h2><img alt='feature importance' src='data:image/png;base64," in page
    assert "Feature importance" not in render("runs/r", {**metrics, "feature_importance": []}, baselines={},
                                              leaderboard=None, config=None)
