"""Task metrics from model outputs, shared by validation, test scoring and `evaluate`.

Classification: accuracy, f1_macro, roc_auc (one-vs-rest macro for several classes),
log_loss. Regression, in the label's own units: rmse, mae, r2. `loss` is the training
objective on the same rows (cross-entropy, or MSE of the standardised label).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from app.data.transform import PreprocessState


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compute_metrics(outputs: np.ndarray, y: np.ndarray, state: PreprocessState) -> dict[str, float]:
    """outputs: logits [n, k] or standardised predictions [n]; y: encoded labels."""
    if len(y) == 0:
        return {}
    if state.task == "classification":
        return classification_metrics(softmax(outputs.astype(np.float64)), y, len(state.classes))
    return regression_metrics(outputs.astype(np.float64), y.astype(np.float64), state)


def classification_metrics(proba: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    labels = list(range(n_classes))
    p_true = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
    out = {
        "loss": float(-np.log(p_true).mean()),
        "accuracy": float((proba.argmax(axis=1) == y).mean()),
        "f1_macro": float(skm.f1_score(y, proba.argmax(axis=1), labels=labels, average="macro",
                                       zero_division=0)),
        "roc_auc": math.nan,
        "log_loss": float(skm.log_loss(y, proba, labels=labels)),
    }
    try:
        if n_classes == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, proba[:, 1]))
        else:
            out["roc_auc"] = float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels))
    except ValueError:
        pass  # a class is absent from these rows: AUC is undefined, reported as NaN/null
    return out


def regression_metrics(pred_std: np.ndarray, y_std: np.ndarray, state: PreprocessState) -> dict[str, float]:
    pred = pred_std * state.target_std + state.target_mean
    y = y_std * state.target_std + state.target_mean
    return {
        "loss": float(np.mean((pred_std - y_std) ** 2)),
        "rmse": float(math.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else math.nan,
    }


def confusion_matrix(outputs: np.ndarray, y: np.ndarray, classes: list) -> dict:
    """Rows: true class; columns: predicted class; in the order of `classes`."""
    labels = list(range(len(classes)))
    matrix = skm.confusion_matrix(y, outputs.argmax(axis=1), labels=labels) if len(y) else \
        np.zeros((len(labels), len(labels)), dtype=np.int64)
    return {"labels": list(classes), "matrix": matrix.tolist()}


def residual_summary(outputs: np.ndarray, y: np.ndarray, state: PreprocessState) -> dict[str, float]:
    """Residuals (actual - predicted) in the label's units: mean, spread and quantiles."""
    pred = outputs.astype(np.float64) * state.target_std + state.target_mean
    actual = y.astype(np.float64) * state.target_std + state.target_mean
    r = actual - pred
    if len(r) == 0:
        return {}
    q = np.quantile(r, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(r.mean()), "std": float(r.std()), "p05": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]), "max_abs": float(np.abs(r).max())}


def json_safe(value):
    """NaN/inf -> None, recursively, so metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
