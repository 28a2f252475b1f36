"""The tune section: search-space keys, distributions and their parameters."""

import pytest

from app.config import Config
from app.errors import UserError
from app.tuning import metric_and_mode, search_space

BASE = {"name": "t", "data": {"train": "x.csv", "label": "y"}}


def cfg(space, **tune):
    return Config.model_validate(dict(BASE, tune={"space": space, **tune}))


def test_every_distribution_builds():
    domains = search_space(cfg({
        "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
        "model.dropout": {"uniform": [0.0, 0.5]},
        "train.batch_size": {"choice": [64, 128]},
        "model.hidden": {"grid": [[8], [16, 8]]},
        "train.epochs": {"randint": [2, 6]},
        "train.weight_decay": {"quniform": [0.0, 0.1, 0.01]},
        "train.grad_clip": {"qloguniform": [0.1, 10.0, 0.1]},
    }))
    assert set(domains) == {"train.lr", "model.dropout", "train.batch_size", "model.hidden", "train.epochs",
                            "train.weight_decay", "train.grad_clip"}
    assert 1e-4 <= domains["train.lr"].sample() <= 1e-2
    assert domains["model.hidden"] == {"grid_search": [[8], [16, 8]]}


@pytest.mark.parametrize("space, message", [
    ({}, "tune.space: empty"),
    ({"train.lrr": {"choice": [0.1]}}, "tune.space.train.lrr: train.lrr is not a config key"),
    ({"train": {"choice": [1]}}, "tune.space.train: train is not a config key"),
    ({"run.storage": {"choice": ["a"]}}, "run.storage cannot be searched"),
    ({"train.lr": {"normal": [0, 1]}}, "expected one distribution"),
    ({"train.lr": {"loguniform": [0.0, 1.0]}}, "loguniform needs low > 0"),
    ({"train.lr": {"uniform": [0.2, 0.1]}}, "uniform needs low < high"),
    ({"train.lr": {"uniform": [0.1]}}, "uniform takes [low, high] as numbers"),
    ({"train.lr": {"quniform": [0.1, 0.2, 0]}}, "quniform needs q > 0"),
    ({"train.epochs": {"randint": [1.5, 4]}}, "randint takes integers"),
    ({"train.batch_size": {"choice": []}}, "choice takes a non-empty list"),
    ({"train.batch_size": {"choice": [64, 0]}}, "tune.space.train.batch_size: 0 is not a valid train.batch_size"),
    ({"model.dropout": {"uniform": [0.5, 1.5]}}, "1.5 is not a valid model.dropout"),
])
def test_bad_spaces_are_refused_by_key(space, message):
    with pytest.raises(UserError) as e:
        search_space(cfg(space))
    assert message in str(e.value)


def test_search_kind_constraints():
    with pytest.raises(UserError, match="grid search needs grid or choice axes; train.lr"):
        search_space(cfg({"train.lr": {"uniform": [0.1, 0.2]}}, search="grid"))
    with pytest.raises(UserError, match="optuna cannot search grid axes"):
        search_space(cfg({"train.lr": {"grid": [0.1, 0.2]}}, search="optuna"))
    grid = search_space(cfg({"train.batch_size": {"choice": [32, 64]}}, search="grid"))
    assert grid["train.batch_size"] == {"grid_search": [32, 64]}


def test_metric_and_mode_default_to_the_checkpoint_metric():
    assert metric_and_mode(cfg({"train.lr": {"choice": [0.1]}})) == ("valid_loss", "min")
    assert metric_and_mode(cfg({"train.lr": {"choice": [0.1]}}, metric="accuracy")) == ("accuracy", "max")


def test_pbt_is_refused_until_supported():
    with pytest.raises(UserError, match="tune.scheduler.name: pbt is not supported yet"):
        search_space(cfg({"train.lr": {"choice": [0.1]}}, scheduler={"name": "pbt"}))
