"""A regression run with a separate test file, early stopping on a higher-is-better metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import app
from app.config import from_dict
from app.predictor import Predictor
from tests.conftest import PENGUINS, penguins_tree


def test_regression_with_separate_test_file_and_early_stopping(ray_session, tmp_path):
    header, *rows = PENGUINS.read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join([header] + [r for i, r in enumerate(rows) if i % 5]))  # 275
    (tmp_path / "test.csv").write_text("\n".join([header] + rows[::5]))  # every 5th bird: 69
    tree = penguins_tree(tmp_path, name="mass", data__train=str(tmp_path / "train.csv"),
                         data__test=str(tmp_path / "test.csv"), data__label="body_mass_g",
                         train__epochs=40, train__lr=0.01, train__early_stopping_patience=3,
                         scaling__num_workers=1, run__checkpoint={"metric": "r2", "keep": 1})
    cfg = from_dict(tree, "test")
    assert cfg.run.checkpoint.mode == "max"
    metrics = app.train(cfg).metrics

    assert metrics["task"] == "regression"  # int64 label with many values, one gap
    assert set(metrics["test"]) == {"loss", "rmse", "mae", "r2"}
    assert metrics["test"]["r2"] > 0.5  # body mass is well predicted by flipper length and species
    assert 200 < metrics["test"]["rmse"] < 800  # grams, in the label's own units
    history = metrics["history"]
    r2 = [r["r2"] for r in history]
    best = max(range(len(r2)), key=lambda i: (r2[i], -i))
    assert metrics["best_epoch"] == history[best]["epoch"] and metrics["valid"]["r2"] == r2[best]
    # stopped early: three epochs without a better r2 after the best, before the 40 allowed
    assert len(history) < 40 and len(history) == best + 1 + 3
    assert metrics["rows"]["valid"] + metrics["rows"]["train"] == 273  # 275 birds, two without a mass

    # Test details for the report: residuals and (actual, predicted) pairs in grams.
    details = metrics["test_details"]
    assert details["rows"] == 69  # every 5th bird; all 69 have a mass
    actual, predicted = np.array(details["sample"]["actual"]), np.array(details["sample"]["predicted"])
    assert len(actual) == 69 and 2500 < actual.min() and actual.max() < 6500
    assert np.sqrt(np.mean((actual - predicted) ** 2)) == pytest.approx(metrics["test"]["rmse"])
    assert details["residuals"]["mean"] == pytest.approx(np.mean(actual - predicted))
    # The batch path predicts in grams too.
    predictor = Predictor.from_checkpoint(metrics["best_checkpoint"])
    test = pd.read_csv(tmp_path / "test.csv").dropna(subset=["body_mass_g"])
    predicted_again = predictor.prediction_columns(test)["prediction"]
    assert set(predictor.prediction_columns(test)) == {"prediction"}
    assert np.sort(predicted_again) == pytest.approx(np.sort(predicted), rel=1e-5)

    # The default kind's regression exports: ONNX and TorchScript give the same grams.
    import onnxruntime as ort
    import torch

    from app.data.transform import transform
    from app.export import MODEL_FILE, TORCHSCRIPT_FILE, export

    assert cfg.model.kind == "tabm"
    folder = export(metrics["best_checkpoint"], str(tmp_path / "exported"))
    arrays = transform(test, predictor.state, with_label=False)
    onnx = ort.InferenceSession(str(folder / MODEL_FILE)).run(None, {"x_num": arrays["x_num"], "x_cat": arrays["x_cat"]})[0]
    with torch.no_grad():
        scripted = torch.jit.load(str(folder / TORCHSCRIPT_FILE))(torch.from_numpy(arrays["x_num"]),
                                                                 torch.from_numpy(arrays["x_cat"])).numpy()
    np.testing.assert_allclose(onnx, predicted_again, rtol=1e-4)
    np.testing.assert_allclose(scripted, predicted_again, rtol=1e-4)
