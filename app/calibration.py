"""Calibration after training: a temperature for the probabilities, a threshold for the cut.

A network trained to a low validation loss is still often over-confident: its top-class
probability runs ahead of how often it is right. Temperature scaling divides the logits by
one scalar T > 0, fitted on the validation split to minimise the log loss of
softmax(logits / T). T changes no ranking (accuracy and ROC AUC stay), only how sure the
probabilities are. For a binary model `train.threshold_metric` also picks the cut on the
second class's calibrated probability that maximises F1 or balanced accuracy on the same
split, where the default 0.5 is right only for accuracy.

Both are fitted on the driver from the best checkpoint's outputs on the validation split
(the logits and labels only: [rows, classes] floats), recorded in that checkpoint's manifest
(`checkpoint.set_calibration`), and applied by `Predictor` (so by every scoring path) and by
the export. `train.calibration: none` and `threshold_metric: accuracy` leave the
checkpoint predicting exactly as the network does.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from app import checkpoint as ckpt
from app.config import TrainConfig
from app.data.prepare import Prepared
from app.data.shards import HeldShards
from app.metrics import CalibrationSums, softmax
from app.predictor import SCORE_BATCH, Predictor

log = logging.getLogger(__name__)

# log T is searched in these bounds: a temperature outside them means a validation split
# too small or too separable to say anything (its log loss keeps falling as T -> 0).
LOG_T_BOUNDS = (math.log(0.05), math.log(100.0))


def log_loss(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature), computed in log space
    (no probability rounds to 0 on the way)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), np.asarray(y, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in `LOG_T_BOUNDS` that minimises the log loss of softmax(logits / T).

    The loss is convex in 1/T, so it has one minimum along log T: bounded Brent finds it.
    A T that does not beat T = 1 (no rows, or the search stopping short), or one at a bound
    (a validation split without one error keeps gaining as T -> 0, and a single error
    elsewhere would then cost without limit), is 1."""
    if len(y) == 0:
        return 1.0
    found = minimize_scalar(lambda u: log_loss(logits, y, math.exp(u)), bounds=LOG_T_BOUNDS, method="bounded",
                            options={"xatol": 1e-4})
    t = math.exp(float(found.x))
    if min(abs(float(found.x) - b) for b in LOG_T_BOUNDS) < 1e-2:
        return 1.0  # at a bound: the split is too small or too separable to tell (see LOG_T_BOUNDS)
    return t if log_loss(logits, y, t) < log_loss(logits, y) else 1.0


def _scores(metric: str, tp, fp, fn, tn) -> np.ndarray:
    """`metric` of the positive (second) class's predictions, for arrays of counts."""
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "f1":
            return np.nan_to_num(2 * tp / (2 * tp + fp + fn))
        if metric == "balanced_accuracy":
            return (np.nan_to_num(tp / (tp + fn)) + np.nan_to_num(tn / (tn + fp))) / 2
        return (tp + tn) / (tp + fp + fn + tn)


def score(metric: str, predicted: np.ndarray, y: np.ndarray) -> float:
    """`metric` (accuracy, f1 of the second class, balanced_accuracy) of 0/1 predictions."""
    p, t = np.asarray(predicted) == 1, np.asarray(y) == 1
    return float(_scores(metric, (p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t).sum()))


def pick_threshold(p: np.ndarray, y: np.ndarray, metric: str) -> tuple[float, float]:
    """(threshold, score): the cut on `p` (the second class's probability; predicted
    positive where p >= threshold) that maximises `metric` on these rows, among every cut
    between two distinct values of p, and the metric there. The cut lies halfway between
    the two values, not on one of them, so rows near it fall on either side alike."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], np.asarray(y)[order] == 1
    n, positives = len(ps), int(ys.sum())
    tp = np.cumsum(ys)  # predicted positive: the top i + 1 rows
    i = np.arange(1, n + 1)
    fp, fn = i - tp, positives - tp
    s = _scores(metric, tp, fp, fn, n - positives - fp)
    s[:-1][ps[:-1] == ps[1:]] = -np.inf  # a cut between equal values is no cut
    best = int(np.argmax(s))
    upper, lower = ps[best], ps[best + 1] if best + 1 < n else 0.0
    cut = (upper + lower) / 2
    return float(cut if lower < cut <= upper else upper), float(s[best])


def valid_outputs(predictor: Predictor, data: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """The network's raw outputs and the labels of the validation split, scored here block
    by block: read from the object store (a small input's held arrays) or streamed from the
    split's Ray Dataset; only the outputs and labels are kept."""
    if isinstance(data.shards, HeldShards):
        blocks = data.shards.handle("valid", 0, 1).blocks()
    else:
        blocks = data.valid.iter_batches(batch_size=None, batch_format="numpy")
    outputs, labels = [], []
    for b in blocks:
        x_num, x_cat = (np.require(b[c], requirements="W") for c in ("x_num", "x_cat"))  # torch wants writable
        outputs.append(predictor.forward(x_num, x_cat, SCORE_BATCH, calibrated=False))
        labels.append(np.asarray(b["y"], dtype=np.int64 if predictor.state.task == "classification" else np.float64))
    width = len(predictor.state.classes)  # (regression: outputs [rows], labels standardised as trained)
    return (np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32),
            np.concatenate(labels) if labels else np.zeros(0, np.int64))


def fit(train: TrainConfig, logits: np.ndarray, y: np.ndarray, classes: int) -> tuple[dict | None, dict]:
    """(what the checkpoint records, or None for nothing; what metrics.json reports) for
    validation `logits` and labels, per `train.calibration` and `train.threshold_metric`."""
    report: dict[str, Any] = {}
    t = 1.0
    if train.calibration == "temperature":
        t = fit_temperature(logits, y)
        before = CalibrationSums.of(softmax(np.asarray(logits, dtype=np.float64)), y).summary()
        after = CalibrationSums.of(softmax(np.asarray(logits, dtype=np.float64) / t), y).summary()
        report["calibration"] = {"method": "temperature", "temperature": t,
                                 "valid": {"before": before, "after": after}}
    cut = None
    if classes == 2 and train.threshold_metric != "accuracy" and len(y):
        p = softmax(np.asarray(logits, dtype=np.float64) / t)
        metric = train.threshold_metric
        cut, best = pick_threshold(p[:, 1], y, metric)
        at_half = score(metric, p.argmax(axis=1), y)
        if best <= at_half:  # no better than the most probable class: keep that (nothing stored)
            cut, best = None, at_half
        report["threshold"] = {"metric": metric, "value": 0.5 if cut is None else cut,
                               "valid_score_at_0.5": at_half, "valid_score": best}
    if train.calibration == "none" and cut is None:
        return None, report
    return {"method": train.calibration, "temperature": t, "threshold": cut,
            "threshold_metric": train.threshold_metric if cut is not None else None}, report


def calibrate(train: TrainConfig, data: Prepared, checkpoint: str) -> dict[str, Any]:
    """Fit the calibration of a classification run's best `checkpoint` on the validation
    split and record it there (or remove one, when both settings are off); return its
    metrics.json blocks ("calibration", "threshold"; none for regression). Fitted on the
    network's raw outputs, so running it again (a resumed run) gives the same result."""
    if data.state.task != "classification":
        return {}
    if train.threshold_metric != "accuracy" and len(data.state.classes) != 2:
        log.warning(f"train.threshold_metric {train.threshold_metric}: for binary classification only; "
                    f"this task has {len(data.state.classes)} classes, so the most probable class is predicted")
    if train.calibration == "none" and (train.threshold_metric == "accuracy" or len(data.state.classes) != 2):
        ckpt.set_calibration(checkpoint, None)  # nothing to fit: no need to score the validation split
        return {}
    predictor = Predictor.from_checkpoint(checkpoint)
    logits, y = valid_outputs(predictor, data)
    recorded, report = fit(train, logits, y, len(data.state.classes))
    ckpt.set_calibration(checkpoint, recorded)
    if "calibration" in report:
        c = report["calibration"]
        log.info(f"calibration: temperature {c['temperature']:.3f}; validation log loss "
                 f"{c['valid']['before']['log_loss']:.4f} -> {c['valid']['after']['log_loss']:.4f}, "
                 f"ECE {c['valid']['before']['ece']:.4f} -> {c['valid']['after']['ece']:.4f}")
    if "threshold" in report:
        th = report["threshold"]
        log.info(f"decision threshold {th['value']:.4f} for {th['metric']}: validation {th['metric']} "
                 f"{th['valid_score_at_0.5']:.4f} at 0.5 -> {th['valid_score']:.4f}")
    return report
