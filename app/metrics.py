"""Task metrics from model outputs, shared by validation, test scoring and `evaluate`.

Classification: accuracy, f1_macro, roc_auc (one-vs-rest macro for several classes),
log_loss. Regression, in the label's own units: rmse, mae, r2. `loss` is the training
objective on the same rows (cross-entropy, or MSE of the standardised label).

Every path computes them the same way, from `MetricSums`: fixed-size sums of a block of
rows that merge exactly (counts, a confusion matrix, sums and Chan's merge of means and
squared deviations), so that no step needs every scored row in one process. Those give
every metric exactly except ROC AUC, which comes from per-class histograms of each class's
log-odds z against the rest (`AUC_BINS` bins over sign(z) log(1 + |z|) in ±`SCALE_LIMIT`,
computed from the raw outputs so that confident rows stay apart). Pairs of a positive and
a negative row whose scores share a bin count as ties (half), so the AUC is off by at most
half the share of such pairs: `MetricSums.auc_error_bound()` is that figure. A regression's
residual quantiles and its (actual, predicted) pairs come from a seeded sample of at most
`SAMPLE_POINTS` rows, chosen by a hash of their values, so the same rows win however the
data is split into blocks.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.data.preprocess import merge_moments
from app.data.transform import PreprocessState

AUC_BINS = 8192
SCALE_LIMIT = 7.0  # bins cover sign(z) log(1 + |z|) in [-7, 7]: log-odds up to about ±1100
SAMPLE_POINTS = 1000  # (actual, predicted) pairs kept for a regression's plot and residual quantiles
_EPS = float(np.finfo(np.float64).eps)  # log_loss clips as scikit-learn does


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compute_metrics(outputs: np.ndarray, y: np.ndarray, state: PreprocessState) -> dict[str, float]:
    """outputs: logits [n, k] or standardised predictions [n]; y: encoded labels."""
    return MetricSums.of(outputs, y, state).metrics(state)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each value."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass
class MetricSums:
    """What the metrics need of a set of scored rows, in a fixed size; `merge` adds two sets."""

    classification: bool
    n_classes: int = 0
    n: int = 0
    loss_sum: float = 0.0
    # classification
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    log_loss_sum: float = 0.0
    positives: np.ndarray = field(default_factory=lambda: np.zeros((0, AUC_BINS), dtype=np.int64))
    negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, AUC_BINS), dtype=np.int64))
    # regression, in the label's units
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    y_mean: float = 0.0
    y_m2: float = 0.0
    r_mean: float = 0.0
    r_m2: float = 0.0
    max_abs: float = 0.0
    sample_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    sample_actual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sample_predicted: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # rows whose label is present but unusable (not a number; a class not seen in training):
    # left out of the metrics, and counted
    unusable: int = 0

    @classmethod
    def empty(cls, state: PreprocessState) -> MetricSums:
        if state.task != "classification":
            return cls(classification=False)
        k = len(state.classes)
        return cls(classification=True, n_classes=k, confusion=np.zeros((k, k), dtype=np.int64),
                   positives=np.zeros((k, AUC_BINS), dtype=np.int64), negatives=np.zeros((k, AUC_BINS), dtype=np.int64))

    @classmethod
    def of(cls, outputs: np.ndarray, y: np.ndarray, state: PreprocessState) -> MetricSums:
        """The sums of one block: logits [n, k] or standardised predictions [n], encoded labels."""
        out = cls.empty(state)
        if len(y) == 0:
            return out
        out.n = len(y)
        if out.classification:
            y = np.asarray(y, dtype=np.int64)
            proba = softmax(np.asarray(outputs, dtype=np.float64))
            p_true = proba[np.arange(len(y)), y]
            out.loss_sum = float(-np.log(np.clip(p_true, 1e-15, 1.0)).sum())
            out.log_loss_sum = float(-np.log(np.clip(p_true, _EPS, 1 - _EPS)).sum())
            k = out.n_classes
            out.confusion = np.bincount(y * k + proba.argmax(axis=1), minlength=k * k).reshape(k, k).astype(np.int64)
            bins = _bins_of(_class_logits(np.asarray(outputs, dtype=np.float64)))
            for c in range(k):
                is_c = y == c
                out.positives[c] = np.bincount(bins[is_c, c], minlength=AUC_BINS)
                out.negatives[c] = np.bincount(bins[~is_c, c], minlength=AUC_BINS)
            return out
        pred_std = np.asarray(outputs, dtype=np.float64)
        y_std = np.asarray(y, dtype=np.float64)
        pred = pred_std * state.target_std + state.target_mean
        actual = y_std * state.target_std + state.target_mean
        r = actual - pred
        out.loss_sum = float(((pred_std - y_std) ** 2).sum())
        out.abs_sum, out.sq_sum = float(np.abs(r).sum()), float((r ** 2).sum())
        out.y_mean, out.y_m2 = float(actual.mean()), float(((actual - actual.mean()) ** 2).sum())
        out.r_mean, out.r_m2 = float(r.mean()), float(((r - r.mean()) ** 2).sum())
        out.max_abs = float(np.abs(r).max())
        keys = _mix64(actual.view(np.uint64) ^ _mix64(pred.view(np.uint64)))
        keep = np.argsort(keys, kind="stable")[:SAMPLE_POINTS]
        out.sample_keys, out.sample_actual, out.sample_predicted = keys[keep], actual[keep], pred[keep]
        return out

    def merge(self, other: MetricSums) -> MetricSums:
        """Both sets together (neither argument is changed)."""
        if other.n == 0 or self.n == 0:
            return dataclasses.replace(self if other.n == 0 else other, unusable=self.unusable + other.unusable)
        out = self._merge_scored(other)
        out.unusable = self.unusable + other.unusable
        return out

    def _merge_scored(self, other: MetricSums) -> MetricSums:
        out = MetricSums(classification=self.classification, n_classes=self.n_classes, n=self.n + other.n,
                         loss_sum=self.loss_sum + other.loss_sum)
        if self.classification:
            out.confusion = self.confusion + other.confusion
            out.log_loss_sum = self.log_loss_sum + other.log_loss_sum
            out.positives, out.negatives = self.positives + other.positives, self.negatives + other.negatives
            return out
        out.abs_sum, out.sq_sum = self.abs_sum + other.abs_sum, self.sq_sum + other.sq_sum
        _, out.y_mean, out.y_m2 = merge_moments((self.n, self.y_mean, self.y_m2), (other.n, other.y_mean, other.y_m2))
        _, out.r_mean, out.r_m2 = merge_moments((self.n, self.r_mean, self.r_m2), (other.n, other.r_mean, other.r_m2))
        out.max_abs = max(self.max_abs, other.max_abs)
        keys = np.concatenate([self.sample_keys, other.sample_keys])
        keep = np.argsort(keys, kind="stable")[:SAMPLE_POINTS]
        out.sample_keys = keys[keep]
        out.sample_actual = np.concatenate([self.sample_actual, other.sample_actual])[keep]
        out.sample_predicted = np.concatenate([self.sample_predicted, other.sample_predicted])[keep]
        return out

    def metrics(self, state: PreprocessState) -> dict[str, float]:
        if self.n == 0:
            return {}
        n = self.n
        if not self.classification:
            return {"loss": self.loss_sum / n, "rmse": math.sqrt(self.sq_sum / n), "mae": self.abs_sum / n,
                    "r2": _r2(self.sq_sum, self.y_m2) if n > 1 else math.nan}
        cm = self.confusion
        tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
        denominator = predicted + actual
        f1 = np.divide(2 * tp, denominator, out=np.zeros(len(tp), dtype=np.float64), where=denominator > 0)
        return {"loss": self.loss_sum / n, "accuracy": float(tp.sum() / n), "f1_macro": float(f1.mean()),
                "roc_auc": self.roc_auc(), "log_loss": self.log_loss_sum / n}

    def _class_auc(self, c: int) -> tuple[float, float]:
        """(AUC, its error bound) of class c against the rest."""
        pos, neg = self.positives[c].astype(np.float64), self.negatives[c].astype(np.float64)
        pairs = pos.sum() * neg.sum()
        below = np.cumsum(neg) - neg  # negatives in lower bins
        return float((pos * (below + 0.5 * neg)).sum() / pairs), float(0.5 * (pos * neg).sum() / pairs)

    def roc_auc(self) -> float:
        """One-vs-rest macro AUC (the positive class's for two classes); NaN when a class is
        absent from these rows, as scikit-learn refuses to compute it then."""
        if (self.confusion.sum(axis=1) == 0).any():
            return math.nan
        if self.n_classes == 2:
            return self._class_auc(1)[0]
        return float(np.mean([self._class_auc(c)[0] for c in range(self.n_classes)]))

    def auc_error_bound(self) -> float:
        if not self.classification or (self.confusion.sum(axis=1) == 0).any():
            return 0.0
        classes = [1] if self.n_classes == 2 else range(self.n_classes)
        return float(np.mean([self._class_auc(c)[1] for c in classes]))

    def confusion_matrix(self, classes: list) -> dict:
        return {"labels": list(classes), "matrix": self.confusion.tolist()}

    def curves(self, classes: list) -> dict[str, list[dict[str, Any]]]:
        """ROC and precision-recall curves from the AUC histograms, one-vs-rest for each
        class (the positive class only for two): {"roc": [{class, auc, fpr, tpr,
        threshold}], "pr": [{class, average_precision, recall, precision, threshold}]}.
        Each curve is thinned to about CURVE_POINTS / classes points (at least
        `CURVE_MIN_POINTS`); `threshold` is the class's probability at each point (its
        histogram bin's lower edge). A class absent from these rows has no curve."""
        out: dict[str, list[dict[str, Any]]] = {"roc": [], "pr": []}
        if not self.classification or self.n == 0:
            return out
        shown = [1] if self.n_classes == 2 else range(self.n_classes)
        points = max(CURVE_MIN_POINTS, CURVE_POINTS // len(shown))
        for c in shown:
            pos, neg = self.positives[c][::-1], self.negatives[c][::-1]  # highest score first
            if pos.sum() == 0 or neg.sum() == 0:
                continue
            tp = np.concatenate([[0], np.cumsum(pos)]).astype(np.float64)
            fp = np.concatenate([[0], np.cumsum(neg)]).astype(np.float64)
            tpr, fpr = tp / tp[-1], fp / fp[-1]
            # a point wherever the cut passes a non-empty bin; bin b's lower edge is the cut
            cut = np.concatenate([[True], (pos + neg) > 0])
            edges = _bin_probability(AUC_BINS - np.arange(AUC_BINS + 1))  # cut below each reversed bin
            precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
            ap = float(np.sum(np.diff(tpr) * precision[1:]))  # scikit-learn's average_precision_score
            auc = self._class_auc(c)[0]
            keep = _thin(np.flatnonzero(cut), (fpr + tpr) / 2, points)
            label = _plain(classes[c])
            out["roc"].append({"class": label, "auc": auc, "fpr": _r(fpr[keep]), "tpr": _r(tpr[keep]),
                               "threshold": _r(edges[keep])})
            keep = keep[1:]  # precision at the first cut (no row above it) is undefined
            out["pr"].append({"class": label, "average_precision": ap, "recall": _r(tpr[keep]),
                              "precision": _r(precision[keep]), "threshold": _r(edges[keep])})
        return out

    def residual_summary(self) -> dict[str, float]:
        """Residuals (actual - predicted) in the label's units: mean, std and largest
        magnitude exact; quantiles from the sample."""
        if self.n == 0:
            return {}
        q = np.quantile(self.sample_actual - self.sample_predicted, [0.05, 0.25, 0.5, 0.75, 0.95])
        return {"mean": self.r_mean, "std": math.sqrt(self.r_m2 / self.n), "p05": float(q[0]), "p25": float(q[1]),
                "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]), "max_abs": self.max_abs}

    def sample(self) -> dict[str, list[float]]:
        return {"actual": self.sample_actual.tolist(), "predicted": self.sample_predicted.tolist()}


def _class_logits(z: np.ndarray) -> np.ndarray:
    """Each class's log-odds against the rest, z_c - logsumexp(z_others), from the raw
    outputs: no round trip through probabilities, which saturate at 1 for confident rows."""
    k = z.shape[1]
    out = np.empty_like(z)
    for c in range(k):
        others = np.delete(z, c, axis=1)
        top = others.max(axis=1)
        # every other class at -inf (a baseline's log of a probability of 0): the class's
        # log-odds are +inf, not inf - inf
        top = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            out[:, c] = z[:, c] - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))
    return out


def _bins_of(logits: np.ndarray) -> np.ndarray:
    """Histogram bins of log-odds on a log-compressed scale, sign(z) log(1 + |z|): fine near
    0, still apart at |z| in the hundreds."""
    u = np.sign(logits) * np.log1p(np.abs(np.nan_to_num(logits, nan=0.0, posinf=1e300, neginf=-1e300)))
    return np.clip(((u + SCALE_LIMIT) / (2 * SCALE_LIMIT) * AUC_BINS).astype(np.int64), 0, AUC_BINS - 1)


CURVE_POINTS = 300  # points of the ROC (and of the PR) curves of one test split, over all classes
CURVE_MIN_POINTS = 25  # ... but at least this many per class


def _thin(candidates: np.ndarray, position: np.ndarray, points: int) -> np.ndarray:
    """At most about `points` of the candidate indices (ascending), evenly spread along
    `position` (a non-decreasing progress from 0 to 1 along the curve), ends included."""
    if len(candidates) <= points:
        return candidates
    at = np.searchsorted(position[candidates], np.linspace(0.0, 1.0, points), side="left")
    return np.unique(np.concatenate([[candidates[0]], candidates[np.minimum(at, len(candidates) - 1)],
                                     [candidates[-1]]]))


def _bin_probability(edge: np.ndarray) -> np.ndarray:
    """The one-vs-rest probability at the lower edge of histogram bin `edge` (`_bins_of`
    inverted: the class's log-odds z, then sigmoid(z))."""
    u = edge / AUC_BINS * (2 * SCALE_LIMIT) - SCALE_LIMIT
    z = np.sign(u) * np.expm1(np.abs(u))
    return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))


def _r(values: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in values]


def _plain(value: Any) -> Any:
    """A class label as JSON holds it (numpy scalars as Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def per_class(confusion: list[list[int]] | np.ndarray) -> dict[str, list[float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows:
    actual, columns: predicted); 0 where undefined, as scikit-learn's zero_division=0."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * tp, predicted + actual, out=np.zeros_like(tp), where=(predicted + actual) > 0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": actual.astype(np.int64).tolist()}


def _r2(ss_res: float, ss_tot: float) -> float:
    """scikit-learn's r2_score with force_finite: 1 for a perfect fit of a constant, else 0 then."""
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / ss_tot


ECE_BINS = 15  # equal-width bins of the top-class confidence


@dataclass
class CalibrationSums:
    """Log loss, Brier score and expected calibration error (ECE) of a set of rows from their
    probabilities, as fixed-size sums that merge exactly, like `MetricSums`: a test split
    streamed in blocks gets the same figures as one held whole.

    Brier: the squared distance of the probability vector from the one-hot label, summed
    over classes (for two classes, twice scikit-learn's `brier_score_loss`). ECE: the
    row-weighted mean gap between accuracy and mean top-class confidence over `ECE_BINS`
    equal-width confidence bins."""

    n: int = 0
    log_loss_sum: float = 0.0
    brier_sum: float = 0.0
    count: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, dtype=np.int64))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    correct: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))

    @classmethod
    def of(cls, proba: np.ndarray, y: np.ndarray) -> CalibrationSums:
        """proba: [n, k] probabilities; y: encoded labels."""
        y = np.asarray(y, dtype=np.int64)
        rows = np.arange(len(y))
        onehot = np.zeros_like(proba)
        onehot[rows, y] = 1.0
        top = proba.max(axis=1)
        bins = np.clip((top * ECE_BINS).astype(np.int64), 0, ECE_BINS - 1)
        return cls(n=len(y), log_loss_sum=float(-np.log(np.clip(proba[rows, y], _EPS, 1 - _EPS)).sum()),
                   brier_sum=float(((proba - onehot) ** 2).sum()),
                   count=np.bincount(bins, minlength=ECE_BINS).astype(np.int64),
                   confidence=np.bincount(bins, weights=top, minlength=ECE_BINS),
                   correct=np.bincount(bins, weights=(proba.argmax(axis=1) == y).astype(np.float64),
                                       minlength=ECE_BINS))

    def merge(self, other: CalibrationSums) -> CalibrationSums:
        return CalibrationSums(self.n + other.n, self.log_loss_sum + other.log_loss_sum,
                               self.brier_sum + other.brier_sum, self.count + other.count,
                               self.confidence + other.confidence, self.correct + other.correct)

    def summary(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        return {"log_loss": self.log_loss_sum / self.n, "brier": self.brier_sum / self.n,
                "ece": float(np.abs(self.correct - self.confidence).sum() / self.n)}

    def reliability(self) -> dict[str, Any]:
        """The reliability diagram's data: per confidence bin (`ECE_BINS` equal-width bins of
        the top-class probability, `edges`), its rows, mean confidence and accuracy (None in
        an empty bin), and the ECE they give."""
        if self.n == 0:
            return {}
        filled = self.count > 0

        def mean(total: np.ndarray) -> list[float | None]:
            per_row = np.divide(total, self.count, out=np.zeros(ECE_BINS), where=filled)
            return [round(float(v), 5) if f else None for v, f in zip(per_row, filled)]

        return {"edges": _r(np.linspace(0.0, 1.0, ECE_BINS + 1)), "rows": self.count.tolist(),
                "confidence": mean(self.confidence), "accuracy": mean(self.correct), "ece": self.summary()["ece"]}


def json_safe(value):
    """NaN/inf -> None, recursively, so metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- sums of a Ray Dataset's blocks


def block_sums(ds, fn: Callable[..., Any], *args: Any, batch_format: str = "pandas") -> Iterator[Any]:
    """`fn(block, *args)` of each block of `ds`, computed by Ray Data tasks on the cluster
    (1 CPU each), and handed to this process as they stream in. `fn` returns fixed-size sums
    (a `MetricSums`, a list of them): a block travels back as those, pickled, never as rows,
    so whoever merges them holds a few at a time whatever the data's size."""
    out = ds.map_batches(_pickled, fn_args=(fn, *args), batch_format=batch_format, batch_size=None, num_cpus=1)
    out.context.raise_original_map_exception = True  # bad input raised in `fn` comes back as itself
    for batch in out.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for blob in batch["sums"]:
            yield pickle.loads(blob)


def _pickled(block, fn: Callable[..., Any], *args: Any) -> dict[str, np.ndarray]:
    return {"sums": np.array([pickle.dumps(fn(block, *args))], dtype=object)}
