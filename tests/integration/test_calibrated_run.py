"""A real (small) training run, of a file with columns it drops, calibrates its best
checkpoint: metrics.json holds the calibration and threshold blocks and the feature
importance, the checkpoint holds what they report, and `evaluate` of that checkpoint
reproduces metrics.json's test block exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import app
from app import checkpoint as ckpt
from tests.conftest import penguins_tree
from tests.unit.test_calibration import rare_positives


def test_a_binary_run_is_calibrated_and_evaluate_reproduces_its_test_metrics(ray_session, tmp_path):
    train = rare_positives(1500, 0)
    # Columns in data.drop are never read: `extra` is whole numbers for more than the first
    # 1 MiB of the file (the block whose values would type a CSV column) and a word after it.
    train["note"], train["extra"] = "n" * 800, [str(i) for i in range(len(train))]
    train.loc[len(train) - 1, "extra"] = "oops"
    train.to_csv(tmp_path / "train.csv", index=False)
    assert (tmp_path / "train.csv").stat().st_size > 1.1 * (1 << 20)
    rare_positives(600, 5).to_csv(tmp_path / "test.csv", index=False)
    tree = penguins_tree(tmp_path, name="calibrated", model={"kind": "mlp", "hidden": [32]}, train__epochs=5,
                         train__threshold_metric="f1", scaling__num_workers=1)
    tree["data"] = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv"), "label": "y",
                    "drop": ["note", "extra"]}
    metrics = app.train(tree).metrics

    cal, threshold = metrics["calibration"], metrics["threshold"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0
    for split in ("valid", "test"):
        for when in ("before", "after"):
            assert set(cal[split][when]) == {"log_loss", "brier", "ece"}
    assert cal["valid"]["after"]["log_loss"] <= cal["valid"]["before"]["log_loss"]
    assert cal["test"]["after"]["log_loss"] == pytest.approx(metrics["test"]["log_loss"], rel=1e-9)
    assert threshold["metric"] == "f1" and threshold["valid_score"] >= threshold["valid_score_at_0.5"]

    best = metrics["best_checkpoint"]
    recorded = json.loads((Path(best) / ckpt.MANIFEST).read_text())["calibration"]
    stored = threshold["value"] if threshold["valid_score"] > threshold["valid_score_at_0.5"] else None
    assert (recorded["temperature"], recorded["threshold"]) == (cal["temperature"], stored)
    assert app.evaluate(best, str(tmp_path / "test.csv"))["metrics"] == metrics["test"]

    # report.importance (on by default): the column that drives the label most ranks first,
    # above the one that does not drive it at all
    ranking = [entry["feature"] for entry in metrics["feature_importance"]]
    assert ranking[0] == "x1" and ranking.index("noise") > ranking.index("x2")
    assert metrics["importance"]["rows"] == 600 and metrics["importance"]["metric"] == "log_loss"
