"""The HTML report and the output writer, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from app.data.transform import PreprocessState
from app.metrics import MetricSums
from app.report import render
from tests.unit.test_ownership import write


def test_regression_report_has_scatter_and_metrics():
    history = [{"epoch": e, "train_loss": 1 / e, "valid_loss": 1.2 / e, "rmse": 10 / e, "mae": 8 / e, "r2": 1 - 1 / e}
               for e in range(1, 4)]
    metrics = {"task": "regression", "valid": {"rmse": 3.3, "mae": 2.0, "r2": 0.5},
               "test": {"rmse": 3.5, "mae": 2.1, "r2": None}, "history": history, "best_epoch": 3,
               "test_details": {"sample": {"actual": [1.0, 2.0, 3.0], "predicted": [1.1, 1.9, 3.2]}}}
    page = render("runs/mass", metrics, baselines={"random_forest": {"test": {"rmse": 4.25}}}, leaderboard=None,
                  config="name: mass\n")
    assert "<h1>mass <small>training run</small></h1>" in page
    assert "Predicted vs actual" in page and "Confusion" not in page
    assert page.count("data:image/png;base64,") == 2
    assert "<td>3.5000</td>" in page and "<td>n/a</td>" in page and "<td>4.2500</td>" in page


def test_sweep_report_has_the_leaderboard():
    metrics = {"task": "classification", "test": {"accuracy": 0.9}, "best_trial": "t1", "trials": 2,
               "test_details": {"confusion_matrix": {"labels": ["a", "b"], "matrix": [[3, 1], [0, 4]]}}}
    page = render("runs/sweep", metrics, baselines={},
                  leaderboard="trial_id,status,train.lr,valid_loss\nt1,completed,0.001,0.25\n", config=None)
    assert "<small>sweep</small>" in page and "<td>t1</td>" in page and "Confusion matrix" in page


def test_confusion_matrix_and_residuals():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labelled = PreprocessState(label="y", task="classification", numeric=[], categorical=[], classes=["a", "b"])
    cm = MetricSums.of(logits, np.array([0, 0, 1]), labelled).confusion_matrix(["a", "b"])
    assert cm == {"labels": ["a", "b"], "matrix": [[1, 1], [1, 0]]}
    state = PreprocessState(label="y", task="regression", numeric=[], categorical=[], target_mean=10.0,
                            target_std=2.0)
    r = MetricSums.of(np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, -1.0]), state).residual_summary()
    assert r["mean"] == 0.0 and r["max_abs"] == 2.0 and r["p95"] == pytest.approx(1.8)


def test_output_is_not_left_half_written(tmp_path):
    def batches():
        yield pa.table({"x": [1, 2]})
        raise RuntimeError("scoring failed half-way")

    for name in ("out.parquet", "out_parts"):
        with pytest.raises(RuntimeError):
            write(str(tmp_path / name), batches())
    assert list(tmp_path.iterdir()) == []
    assert write(str(tmp_path / "ok.csv"), iter([pa.table({"x": [1]}), pa.table({"x": [None]})])) == 2
    assert (tmp_path / "ok.csv").read_text().splitlines() == ['"x"', "1", ""]
