"""Calibration after training (app/calibration.py), without Ray: on data whose truth is known
by construction, temperature scaling repairs a deliberately over-confident model, a tuned
threshold beats 0.5 on F1 for a rare positive class, and every scoring path (the
predictor that `predict` and `serve` call per block, the Python API, `evaluate`'s sums and
the exported folder) applies the same calibration; a checkpoint without one predicts as
before."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import app
from app import calibration
from app import checkpoint as ckpt
from app.config import ModelConfig, TrainConfig
from app.data.transform import transform
from app.errors import UserError
from app.metrics import CalibrationSums, softmax
from app.predictor import SCORE_BATCH, Predictor, score_tables
from tests.unit.test_scoring_path import fitted_checkpoint, load_exported

OVERCONFIDENT = 10.0  # the trained network's logits, multiplied by this


def rare_positives(n: int, seed: int) -> pd.DataFrame:
    """A binary table with about 10% positives whose log-odds are known: 2·x1 + x2 + c's
    effect - 3.3; `noise` does not matter."""
    rng = np.random.default_rng(seed)
    x1, x2, c = rng.normal(size=n), rng.normal(size=n), rng.choice(["a", "b", "c"], n)
    z = 2 * x1 + x2 + np.select([c == "a", c == "b"], [0.5, -0.5], 0.0) - 3.3
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-z)), "pos", "neg")
    return pd.DataFrame({"x1": x1.round(4), "x2": x2.round(4), "c": c, "noise": rng.normal(size=n).round(4), "y": y})


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory):
    """A checkpoint of a network fitted (full batch, in this process) on `rare_positives`,
    whose last layer is then multiplied by OVERCONFIDENT; and held-out valid and test rows."""
    tmp = tmp_path_factory.mktemp("calibration")
    train = rare_positives(3000, 0)
    base = Predictor.from_checkpoint(fitted_checkpoint(tmp / "base", train, "y"))
    state, net = base.state, base.model.train()
    arrays = transform(train, state)
    x_num, x_cat, y = (torch.from_numpy(arrays[k]) for k in ("x_num", "x_cat", "y"))
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x_num, x_cat), y).backward()
        opt.step()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(OVERCONFIDENT)
        last.bias.mul_(OVERCONFIDENT)
    path = ckpt.write_checkpoint(tmp / "checkpoint", model=net.eval(), optimizer=opt,
                                 scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0), state=state,
                                 model_cfg=ModelConfig(kind="mlp", hidden=[16]),
                                 train_state={"epoch": 1, "progress": {}})
    assert state.classes == ["neg", "pos"]
    return {"checkpoint": str(path), "valid": rare_positives(2000, 1), "test": rare_positives(4000, 2), "tmp": tmp}


def raw_logits(predictor: Predictor, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    arrays = transform(df, predictor.state)
    return predictor.forward(arrays["x_num"], arrays["x_cat"], SCORE_BATCH, calibrated=False), arrays["y"]


def test_temperature_recovers_a_known_overconfidence():
    """Labels drawn from softmax(z), model logits 10·z: the fitted T is 10."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 3)) * 1.5
    y = (rng.random(20000)[:, None] > np.cumsum(softmax(z), axis=1)).sum(axis=1)
    t = calibration.fit_temperature(10 * z, y)
    assert t == pytest.approx(10, rel=0.05)
    assert calibration.fit_temperature(z, y) == pytest.approx(1, rel=0.05)
    assert calibration.log_loss(10 * z, y, t) < calibration.log_loss(10 * z, y) - 0.5


def test_calibration_sums_merge_exactly():
    rng = np.random.default_rng(1)
    proba, y = softmax(rng.normal(size=(500, 4)) * 3), rng.integers(0, 4, 500)
    whole = CalibrationSums.of(proba, y).summary()
    parts = CalibrationSums.of(proba[:123], y[:123]).merge(CalibrationSums.of(proba[123:], y[123:])).summary()
    assert parts == pytest.approx(whole, rel=1e-12)
    onehot = np.eye(4)[y]
    assert whole["brier"] == pytest.approx(((proba - onehot) ** 2).sum(axis=1).mean())
    assert whole["log_loss"] == pytest.approx(calibration.log_loss(np.log(proba), y))


def test_threshold_is_the_best_cut_on_its_rows():
    """pick_threshold against every cut tried one by one."""
    rng = np.random.default_rng(2)
    p = np.round(rng.random(300), 2)  # ties: a cut never separates equal values
    y = (rng.random(300) < p * 0.4).astype(np.int64)
    for metric in ("f1", "balanced_accuracy"):
        cut, best = calibration.pick_threshold(p, y, metric)
        brute = max(calibration.score(metric, (p >= t).astype(np.int64), y) for t in np.unique(p))
        assert best == pytest.approx(brute)
        assert calibration.score(metric, (p >= cut).astype(np.int64), y) == pytest.approx(best)


def test_temperature_scaling_repairs_an_overconfident_model(overconfident):
    predictor = Predictor.from_checkpoint(overconfident["checkpoint"])
    logits, y = raw_logits(predictor, overconfident["valid"])
    recorded, report = calibration.fit(TrainConfig(threshold_metric="f1"), logits, y, 2)
    t = report["calibration"]["temperature"]
    assert t > 3  # the network's own logits were about right; these are 10 times them
    before, after = report["calibration"]["valid"]["before"], report["calibration"]["valid"]["after"]
    assert after["log_loss"] < before["log_loss"] - 0.05
    assert after["ece"] < before["ece"] / 2
    assert after["brier"] < before["brier"]
    # the tuned cut beats 0.5 on F1, on the rows it was picked on and on held-out rows
    th = report["threshold"]
    assert th["metric"] == "f1" and th["value"] < 0.5 and th["valid_score"] > th["valid_score_at_0.5"] + 0.01
    test_logits, test_y = raw_logits(predictor, overconfident["test"])
    p = softmax(test_logits.astype(np.float64) / t)[:, 1]
    assert calibration.score("f1", (p >= th["value"]).astype(np.int64), test_y) > \
        calibration.score("f1", (p > 0.5).astype(np.int64), test_y) + 0.01
    assert recorded == {"method": "temperature", "temperature": t, "threshold": th["value"], "threshold_metric": "f1"}


def test_every_scoring_path_applies_the_calibration(overconfident):
    uri, rows = overconfident["checkpoint"], overconfident["test"]
    plain = Predictor.from_checkpoint(uri)
    logits, y = raw_logits(plain, overconfident["valid"])
    recorded, _ = calibration.fit(TrainConfig(threshold_metric="f1"), logits, y, 2)
    ckpt.set_calibration(uri, recorded)
    try:
        predictor = Predictor.from_checkpoint(uri)  # checksums still match: only the manifest changed
        features = rows.drop(columns="y")
        served = predictor.prediction_columns(features, SCORE_BATCH)  # serve's call, and predict's per block
        expected = softmax(raw_logits(plain, rows)[0].astype(np.float64) / recorded["temperature"])
        assert np.allclose(served["proba_pos"], expected[:, 1], atol=1e-6)
        assert not np.allclose(plain.prediction_columns(features)["proba_pos"], expected[:, 1], atol=1e-2)
        cut = np.where(expected[:, 1] >= recorded["threshold"], "pos", "neg")
        assert (served["prediction"] == cut).all() and (cut != np.where(expected[:, 1] > 0.5, "pos", "neg")).any()

        model = app.load_model(uri)
        assert np.allclose(model.predict_proba(features)["pos"], served["proba_pos"], atol=1e-5)
        assert (model.predict(features).to_numpy() == served["prediction"]).all()
        from app.export import export

        _, exported = load_exported(export(uri, str(overconfident["tmp"] / "exported")))
        out = exported.predict(features)
        assert np.allclose(out["proba_pos"], served["proba_pos"], atol=1e-5)
        assert (out["prediction"] == served["prediction"]).all()

        # evaluate's sums count each row as `prediction` does; log loss is the calibrated one
        import pyarrow as pa

        metrics = score_tables(predictor, [pa.Table.from_pandas(rows)]).metrics(predictor.state)
        assert metrics["accuracy"] == pytest.approx(float((served["prediction"] == rows["y"]).mean()))
        p_true = np.where(rows["y"] == "pos", expected[:, 1], expected[:, 0])
        assert metrics["log_loss"] == pytest.approx(float(-np.log(p_true).mean()), rel=1e-5)
    finally:
        ckpt.set_calibration(uri, None)


def test_calibration_off_predicts_as_before(overconfident):
    uri, features = overconfident["checkpoint"], overconfident["test"].drop(columns="y")
    before = Predictor.from_checkpoint(uri).prediction_columns(features)
    logits, y = raw_logits(Predictor.from_checkpoint(uri), overconfident["valid"])
    recorded, report = calibration.fit(TrainConfig(calibration="none"), logits, y, 2)
    assert recorded is None and report == {}
    ckpt.set_calibration(uri, {"method": "temperature", "temperature": 4.0, "threshold": 0.2})
    ckpt.set_calibration(uri, recorded)  # off: a calibration recorded earlier goes
    assert "calibration" not in json.loads((overconfident["tmp"] / "checkpoint" / ckpt.MANIFEST).read_text())
    after = Predictor.from_checkpoint(uri).prediction_columns(features)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_damaged_calibration_is_refused(overconfident):
    uri = overconfident["checkpoint"]
    ckpt.set_calibration(uri, {"method": "temperature", "temperature": -1.0, "threshold": None})
    try:
        with pytest.raises(UserError, match="unreadable calibration"):
            Predictor.from_checkpoint(uri)
    finally:
        ckpt.set_calibration(uri, None)
    assert math.isfinite(Predictor.from_checkpoint(uri).temperature)
