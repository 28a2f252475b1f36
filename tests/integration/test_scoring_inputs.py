"""Valid files are accepted whatever their columns hold beyond the model's: a dropped
column is never read, a pass-through column is written as it was read, and labels that
cannot be scored are left out and counted. On a real Ray."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import app
from app.config import from_dict
from tests.unit.test_scoring_path import fitted_checkpoint


def test_train_never_reads_a_dropped_column(ray_session, tmp_path):
    """`extra` is whole numbers for more than the first 1 MiB of the file (the block whose
    values type a CSV column) and words after it: listed in data.drop, it is never read."""
    n = 3000
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    df = pd.DataFrame({"x": x, "k": rng.choice(["u", "v"], n), "note": ["n" * 400] * n,
                       "extra": [str(i) for i in range(n)], "y": np.where(x > 0, "pos", "neg")})
    df.loc[n - 1, "extra"] = "oops"
    df.to_csv(tmp_path / "train.csv", index=False)
    assert (tmp_path / "train.csv").stat().st_size > 1.1 * (1 << 20)
    cfg = from_dict({"name": "dropped", "data": {"train": str(tmp_path / "train.csv"), "label": "y",
                                                 "drop": ["extra", "note"]},
                     "model": {"kind": "mlp", "hidden": [16]}, "train": {"epochs": 10, "lr": 0.01},
                     "scaling": {"num_workers": 1}, "tracking": {"mlflow": False, "tensorboard": False},
                     "run": {"storage": str(tmp_path / "runs")}}, "test")
    result = app.train(cfg)
    assert result.metrics["test"]["accuracy"] > 0.7  # x decides the label; the majority is about 0.5


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=300), "k": rng.choice(["a", "b"], 300)})
    df["y"] = df["x"] * 3 + (df["k"] == "a")
    return fitted_checkpoint(tmp_path_factory.mktemp("regression"), df, "y")


def test_labels_that_cannot_be_scored_are_left_out_and_counted(ray_session, regression, tmp_path, caplog):
    df = pd.DataFrame({"id": [f"{i:05d}" for i in range(1000, 1010)], "x": np.linspace(-1, 1, 10),
                       "k": ["a", "b"] * 5, "y": [str(v) for v in range(10)]})
    df.loc[3, "y"] = "n/a (broken sensor)"
    df.to_csv(tmp_path / "eval.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="app"):
        result = app.evaluate(str(regression), str(tmp_path / "eval.csv"))
    assert result["rows"] == 9 and result["unusable_labels"] == 1
    assert "1 row(s) have a label 'y' that is not a number; they are left out" in caplog.text

    df["y"] = "unknown"
    df.to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(app.UserError, match=r"none.csv: no row has a usable label 'y' to score \(10 labelled"):
        app.evaluate(str(regression), str(tmp_path / "none.csv"))

    # predict passes every column the model does not read through as it was written
    written = app.predict(str(regression), str(tmp_path / "eval.csv"), str(tmp_path / "out.csv"))
    out = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert written == 10 and out["id"].tolist() == df["id"].tolist() and out["y"][3] == "n/a (broken sensor)"
