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


# ---------------------------------------------------------------- the report's sections (issue 30)


def binary_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a binary model whose positive-class score is the label plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return np.stack([np.zeros(n), 1.5 * (2 * y - 1) + rng.normal(size=n)], axis=1), y


def test_roc_and_pr_curves_from_the_sums_agree_with_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from app.metrics import CURVE_POINTS, softmax

    state = PreprocessState(label="y", task="classification", numeric=[], categorical=[], classes=["no", "yes"])
    logits, y = binary_scores(20_000, 0)
    halves = [MetricSums.of(logits[i::2], y[i::2], state) for i in range(2)]
    curves = halves[0].merge(halves[1]).curves(state.classes)  # blocks merged: as a split streamed in
    assert curves == MetricSums.of(logits, y, state).curves(state.classes)
    (roc,), (pr,) = curves["roc"], curves["pr"]
    assert roc["class"] == "yes" and len(roc["fpr"]) <= CURVE_POINTS + 2
    assert roc["auc"] == pytest.approx(roc_auc_score(y, logits[:, 1]), abs=1e-4)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc["auc"], abs=2e-3)  # the thinned curve
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    p = softmax(logits)[:, 1]
    assert pr["average_precision"] == pytest.approx(average_precision_score(y, p), abs=2e-3)
    for i in (5, len(roc["fpr"]) // 2, len(roc["fpr"]) - 5):  # each point: the rows at or above its threshold
        assert roc["tpr"][i] == pytest.approx((p[y == 1] >= roc["threshold"][i]).mean(), abs=2e-4)
        assert roc["fpr"][i] == pytest.approx((p[y == 0] >= roc["threshold"][i]).mean(), abs=2e-4)
    for i in (3, len(pr["recall"]) // 2):
        above = p >= pr["threshold"][i]
        assert pr["precision"][i] == pytest.approx(y[above].mean(), abs=2e-4)

    three = PreprocessState(label="y", task="classification", numeric=[], categorical=[], classes=[1, 2, 3])
    rng = np.random.default_rng(1)
    y3 = rng.integers(0, 3, 3000)
    logits3 = 2.0 * np.eye(3)[y3] + rng.normal(size=(3000, 3))
    curves3 = MetricSums.of(logits3, y3, three).curves(three.classes)
    assert [c["class"] for c in curves3["roc"]] == [1, 2, 3]  # one vs rest, each class
    for c, curve in enumerate(curves3["roc"]):
        assert curve["auc"] == pytest.approx(roc_auc_score(y3 == c, logits3[:, c] - np.log(
            np.exp(np.delete(logits3, c, axis=1)).sum(axis=1))), abs=1e-4)
    absent = MetricSums.of(logits3[y3 != 2], y3[y3 != 2], three).curves(three.classes)
    assert [c["class"] for c in absent["roc"]] == [1, 2]  # a class with no row has no curve


def test_reliability_bins_and_per_class_scores():
    from sklearn.metrics import precision_recall_fscore_support

    from app.metrics import ECE_BINS, CalibrationSums, per_class

    proba = np.array([[0.95, 0.05], [0.92, 0.08], [0.1, 0.9], [0.55, 0.45], [0.3, 0.7]])
    y = np.array([0, 1, 1, 0, 0])
    rel = CalibrationSums.of(proba, y).reliability()  # 15 bins of 1/15: 0.95 in the last, 0.92 and 0.9 in the one below
    assert len(rel["rows"]) == ECE_BINS == 15 and len(rel["edges"]) == ECE_BINS + 1
    assert rel["rows"] == [0] * 8 + [1, 0, 1, 0, 0, 2, 1]
    assert rel["accuracy"][14] == 1.0 and rel["confidence"][14] == 0.95
    assert rel["accuracy"][13] == 0.5 and rel["confidence"][13] == pytest.approx(0.91)
    assert rel["accuracy"][10] == 0.0 and rel["confidence"][10] == 0.7
    assert rel["accuracy"][0] is None and rel["confidence"][0] is None
    assert rel["ece"] == pytest.approx(CalibrationSums.of(proba, y).summary()["ece"])

    actual = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    predicted = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 1])
    cm = np.bincount(actual * 3 + predicted, minlength=9).reshape(3, 3)
    scores = per_class(cm)
    expected = precision_recall_fscore_support(actual, predicted, zero_division=0)
    for i, key in enumerate(("precision", "recall", "f1", "support")):
        np.testing.assert_allclose(scores[key], expected[i])


def section_metrics() -> tuple[dict, dict]:
    """metrics.json of a binary run as `train` writes it (curves from real sums), and its
    preprocess.json."""
    state = PreprocessState(label="churn", task="classification", numeric=[], categorical=[], classes=["no", "yes"])
    logits, y = binary_scores(2000, 2)
    sums = MetricSums.of(logits, y, state)
    from app.metrics import CalibrationSums, softmax

    details = {"rows": 2000, "confusion_matrix": sums.confusion_matrix(state.classes), **sums.curves(state.classes),
               "reliability": CalibrationSums.of(softmax(logits), y).reliability()}
    metrics = {"task": "classification", "valid": {"accuracy": 0.8}, "test": sums.metrics(state),
               "rows": {"train": 7000, "valid": 1000}, "test_details": details,
               "best_checkpoint": "/gone/runs/churn/checkpoint_epoch_0002",
               "calibration": {"method": "temperature", "temperature": 1.7,
                               "test": {"before": {"log_loss": 0.5, "brier": 0.3, "ece": 0.12},
                                        "after": {"log_loss": 0.4, "brier": 0.25, "ece": 0.03}}}}
    preprocess = {"label": "churn", "task": "classification", "dropped": ["empty"],
                  "numeric": [{"name": "age"}, {"name": "spend"}],
                  "categorical": [{"name": "plan", "categories": ["a", "b", "c"]}],
                  "input_types": {"age": "int64", "spend": "double", "plan": "string", "empty": "null"},
                  "missing": {"age": 0.0, "spend": 0.125, "plan": 0.5, "empty": 1.0}}
    return metrics, preprocess


def test_report_has_curves_calibration_per_class_scores_and_a_data_summary(tmp_path):
    import json
    import re

    from app.report import read_preprocess
    from app.runs import METRICS

    metrics, preprocess = section_metrics()
    page = render("runs/churn", metrics, baselines={}, leaderboard=None, config=None, preprocess=preprocess)
    for heading in ("Data", "Confusion matrix (test split)", "Per-class metrics (test split)",
                    "ROC and precision-recall curves (test split)", "Calibration (test split)"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("data:image/png;base64,") == 3  # confusion matrix, ROC + PR, reliability
    cm = np.array(metrics["test_details"]["confusion_matrix"]["matrix"])
    recall_yes = cm[1, 1] / cm[1].sum()
    assert f"<td class='left'>yes</td><td>{cm[1, 1] / cm[:, 1].sum():.4f}</td><td>{recall_yes:.4f}</td>" in page
    assert "<th>test rows</th>" in page and "<td>2000</td>" in page  # rows per split, test from the scored rows
    assert "2 numeric and 1 categorical feature column(s); dropped (no value in training): empty" in page
    assert re.search(r"<td class='left'>spend</td><td class='left'>numeric</td><td class='left'>double</td>"
                     r"<td>12\.5%</td>", page)
    assert re.search(r"<td class='left'>plan</td>.*?<td>50\.0%</td><td>3</td>", page)
    assert f"<td class='left'>no</td><td>{cm[0].sum()}</td>" in page  # label balance
    assert "temperature scaling (T = 1.7)" in page and "ECE 0.1200 &rarr; 0.0300" in page
    assert "No baselines" in page

    # An older checkpoint's preprocess.json (no missing shares) still gives the summary;
    # a run folder that moved finds its checkpoint beside metrics.json.
    del preprocess["missing"]
    (tmp_path / "checkpoint_epoch_0002").mkdir()
    (tmp_path / "checkpoint_epoch_0002" / "preprocess.json").write_text(json.dumps(preprocess))
    (tmp_path / METRICS).write_text(json.dumps(metrics))
    found = read_preprocess(str(tmp_path), metrics["best_checkpoint"])
    assert found == preprocess
    assert "<td class='left'>spend</td><td class='left'>numeric</td><td class='left'>double</td><td>n/a</td>" in \
        render(str(tmp_path), metrics, baselines={}, leaderboard=None, config=None, preprocess=found)
    old = PreprocessState(label="y", task="regression", numeric=[], categorical=[]).to_json()
    assert PreprocessState.from_json(old.replace('"missing": {},', "")).missing == {}


def test_baselines_auto_fit_up_to_a_row_bound():
    from app.config import ReportConfig, from_dict
    from app.errors import UserError

    auto = ReportConfig()
    assert auto.baselines == "auto"
    assert auto.wants_baselines(auto.baselines_auto_rows) and not auto.wants_baselines(auto.baselines_auto_rows + 1)
    assert ReportConfig(baselines=True).wants_baselines(10**9)
    assert not ReportConfig(baselines=False).wants_baselines(10)
    tree = {"name": "x", "data": {"train": "t.csv", "label": "y"}, "report": {"baselines": "sometimes"}}
    with pytest.raises(UserError, match="report.baselines"):
        from_dict(tree, "test")
