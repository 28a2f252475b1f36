"""The Python API, as a notebook user calls it: their own `ray.init()`, data in memory,
results as objects, bad input as `app.UserError`."""

from __future__ import annotations

import pandas as pd
import pytest
import ray.data
import ray.train

import app
from tests.conftest import PENGUINS, penguins_tree


@pytest.fixture(scope="module")
def penguins():
    df = pd.read_csv(PENGUINS)
    shuffled = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    return shuffled.iloc[:270].reset_index(drop=True), shuffled.iloc[270:].reset_index(drop=True)


def frame_config(tmp, name, train, test, **sections):
    tree = penguins_tree(tmp, name=name, train__epochs=3, **sections)
    tree["data"]["train"], tree["data"]["test"] = train, test
    return tree


@pytest.fixture(scope="module")
def frame_run(ray_session, tmp_path_factory, penguins):
    """A run trained from pandas DataFrames on the caller's Ray (the session's)."""
    tmp = tmp_path_factory.mktemp("api-frames")
    train, test = penguins
    tree = frame_config(tmp, "frames", train, test)
    return tree, app.train(tree)


def test_train_from_a_dataframe_on_the_callers_ray(frame_run, penguins):
    tree, result = frame_run
    assert ray.is_initialized()  # the caller's Ray is still up
    assert isinstance(result, app.RunResult)
    assert result.path == f"{tree['run']['storage']}/frames"
    assert result.metrics["task"] == "classification"
    history = result.metrics_dataframe
    assert list(history["epoch"]) == list(range(1, result.metrics["epochs_completed"] + 1))
    assert {"train_loss", "valid_loss", "accuracy"} <= set(history.columns)
    assert isinstance(result.checkpoint, ray.train.Checkpoint)
    assert result.checkpoint.path == result.metrics["best_checkpoint"]
    # the whole test set was scored: the rows given as data.test
    assert result.metrics["test_details"]["rows"] == len(penguins[1])
    # what ran is recorded: where the data was saved, and what it held
    saved = result.config
    assert saved.data.train.endswith("frames/inputs/train.parquet")
    record = saved.data.in_memory["train"]
    assert record.kind == "DataFrame" and record.rows == len(penguins[0])
    assert list(record.columns) == list(penguins[0].columns)


def test_the_loaded_model_reproduces_the_test_metrics(frame_run, penguins):
    _, result = frame_run
    test = penguins[1]
    model = app.load_model(result.checkpoint)
    assert model.evaluate(test) == result.metrics["test"]  # exactly: the same rows, the same scoring
    predicted = model.predict(test)
    assert isinstance(predicted, pd.Series) and predicted.index.equals(test.index)
    accuracy = (predicted == test["species"]).mean()
    assert accuracy == result.metrics["test"]["accuracy"]
    assert accuracy > test["species"].value_counts(normalize=True).max()  # beats the majority class
    proba = model.predict_proba(test)
    assert list(proba.columns) == model.classes and proba.index.equals(test.index)
    assert (proba.sum(axis=1) - 1).abs().max() < 1e-9
    assert (proba.idxmax(axis=1) == predicted).all()
    # a run folder means its best checkpoint; so does the result itself
    assert app.load_model(result.path).checkpoint == app.load_model(result).checkpoint == result.checkpoint.path


def test_a_finished_run_is_returned_and_other_data_is_refused(frame_run, penguins, tmp_path):
    tree, result = frame_run
    again = app.train(tree)
    assert again.metrics == result.metrics  # not trained again
    # the same rows in another form, with the columns in another order: the same data
    same = penguins[0][list(reversed(penguins[0].columns))]
    assert app.train(dict(tree, data=dict(tree["data"], train=ray.data.from_pandas(same)))).metrics == result.metrics
    changed = dict(tree, data=dict(tree["data"], train=penguins[0].iloc[:200]))
    with pytest.raises(app.UserError, match=r"data.train: run 'frames' was started with other data .*fresh=True"):
        app.train(changed)


def test_train_from_a_ray_dataset_then_predict_and_evaluate_in_memory(ray_session, tmp_path, penguins):
    train, test = penguins
    tree = frame_config(tmp_path, "dataset", ray.data.from_pandas(train), None)
    result = app.train(tree)
    record = result.config.data.in_memory["train"]
    assert record.kind == "Dataset" and record.rows == len(train)
    # the same rows from a Dataset and from a DataFrame have the same fingerprint
    from app.data.in_memory import describe

    assert describe(train, "train")[0].fingerprint == record.fingerprint
    # ... however the rows are cut into blocks (one per row here: a block whose `sex` is
    # missing has a column of nulls only)
    one_per_row = ray.data.from_pandas([train.iloc[[i]] for i in range(len(train))])
    assert describe(one_per_row, "train")[0].fingerprint == record.fingerprint

    scored = app.predict(result.checkpoint, test)  # a DataFrame in, a DataFrame out
    assert list(scored.columns[: len(test.columns)]) == list(test.columns) and len(scored) == len(test)
    assert list(scored["prediction"]) == list(app.load_model(result).predict(test))
    lazy = app.predict(result, ray.data.from_pandas(test))  # a Dataset in, a lazy Dataset out
    assert isinstance(lazy, ray.data.Dataset)
    assert sorted(lazy.to_pandas()["prediction"]) == sorted(scored["prediction"])
    written = app.predict(result.path, test, str(tmp_path / "out.csv"))
    assert written == len(test) and len(pd.read_csv(tmp_path / "out.csv")) == len(test)
    with pytest.raises(app.UserError, match="already exists"):
        app.predict(result.path, test, str(tmp_path / "out.csv"))

    evaluated = app.evaluate(result.checkpoint, test)
    assert evaluated["rows"] == len(test)
    assert evaluated["metrics"] == app.load_model(result).evaluate(test)
    on_cluster = app.evaluate(result.checkpoint, ray.data.from_pandas(test))
    assert on_cluster["metrics"]["accuracy"] == evaluated["metrics"]["accuracy"]


def test_bad_input_raises_user_error_not_system_exit(ray_session, tmp_path, penguins):
    with pytest.raises(app.UserError, match="data: required key is missing"):
        app.train({"name": "x"})
    with pytest.raises(app.UserError, match=r"train.epochz \(from --set\): unknown key"):
        app.load_config(penguins_tree(tmp_path), {"train.epochz": 3})
    with pytest.raises(app.UserError, match=r"data.train: expected a path or URI, a SQL source .*, a pandas DataFrame"):
        app.load_config(dict(penguins_tree(tmp_path), data={"train": 3, "label": "species"}))
    with pytest.raises(app.UserError, match="data.label"):
        app.train(frame_config(tmp_path, "nolabel", penguins[0].drop(columns=["species"]), None))
    assert not (tmp_path / "runs" / "nolabel" / "metrics.json").exists()
    with pytest.raises(app.UserError, match="no manifest.json; not a checkpoint"):
        app.load_model(tmp_path)
    cfg = app.load_config(PENGUINS.parent.parent / "configs" / "quickstart.yaml", {"train.epochs": 2})
    assert isinstance(cfg, app.Config) and cfg.train.epochs == 2


@pytest.mark.slow
def test_tune_returns_a_leaderboard_whose_best_config_retrains(ray_session, tmp_path):
    tree = penguins_tree(tmp_path, name="sweep", train__epochs=2)
    tree["tune"] = {"num_samples": 2, "search": "random", "max_concurrent_trials": 2,
                    "scheduler": {"name": "fifo"}, "space": {"train.lr": {"choice": [1.0e-3, 3.0e-3]}}}
    sweep = app.tune(tree)
    assert isinstance(sweep, app.SweepResult)
    board = sweep.leaderboard
    assert len(board) == 2 and "train.lr" in board.columns
    assert sweep.best_config.train.lr == board.iloc[0]["train.lr"]
    assert sweep.best.metrics["best_checkpoint"].startswith(sweep.best.path)
    retrained = app.train(sweep.best_config)
    assert retrained.path.endswith("sweep-best") and retrained.metrics["epochs_completed"] == 2
    assert app.tune(tree).path == sweep.path  # finished: returned as it is


def test_train_from_a_sqlite_database(ray_session, tmp_path, penguins):
    import sqlite3

    db = tmp_path / "penguins.db"
    with sqlite3.connect(db) as connection:
        penguins[0].to_sql("penguins", connection, index=False)
    tree = penguins_tree(tmp_path, name="sql", train__epochs=2)
    tree["data"]["train"] = {"sql": f"sqlite:///{db}", "query": "SELECT * FROM penguins WHERE year > 2007"}
    result = app.train(tree)
    record = result.config.data.in_memory["train"]
    assert record.kind == "SQL" and record.rows == int((penguins[0]["year"] > 2007).sum())
    assert record.source == f"sqlite:///{db} SELECT * FROM penguins WHERE year > 2007"
    rows = result.metrics["rows"]
    assert rows["train"] + rows["valid"] + result.metrics["test_details"]["rows"] == record.rows

    # a database that cannot be reached is named, its password never shown
    tree = penguins_tree(tmp_path, name="sql-bad")
    tree["data"]["train"] = {"sql": "postgresql://ann:s3cret@127.0.0.1:1/shop", "table": "orders"}
    with pytest.raises(app.UserError, match=r"data.train.*postgresql://ann:\*\*\*@127.0.0.1:1/shop") as refused:
        app.train(tree)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(app.UserError, match="give one of `query` or `table`"):
        app.load_config(dict(tree, data=dict(tree["data"], train={"sql": "sqlite:///x.db"})))


@pytest.mark.slow
def test_train_from_a_postgresql_query(ray_session, tmp_path, penguins, postgres):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres)
    with engine.begin() as connection:
        penguins[0].to_sql("penguins", connection, index=False, if_exists="replace")
    engine.dispose()
    tree = penguins_tree(tmp_path, name="postgres", train__epochs=4)
    tree["data"]["train"] = {"sql": postgres, "query": "SELECT * FROM penguins WHERE bill_length_mm IS NOT NULL"}
    result = app.train(tree)
    record = result.config.data.in_memory["train"]
    assert record.kind == "SQL" and record.rows == int(penguins[0]["bill_length_mm"].notna().sum())
    assert record.columns["bill_length_mm"] == "double" and record.columns["species"] == "string"
    test = penguins[1]
    accuracy = (app.load_model(result).predict(test) == test["species"]).mean()
    assert accuracy > test["species"].value_counts(normalize=True).max()

