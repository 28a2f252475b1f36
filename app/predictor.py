"""`Predictor`: a model and its preprocessing, rebuilt from a checkpoint folder alone.

It is the one path from raw rows to predictions: the test scoring at the end of
`train`, and `evaluate`, `predict` and `serve`, so preprocessing cannot drift between them.
A checkpoint's calibration (app/calibration.py) is applied here too: its temperature to
every output (so probabilities, log loss and every metric use it), and a binary model's
decision threshold to the predicted class (`prediction`, and the confusion matrix behind
accuracy and F1). A checkpoint without one predicts from the network's outputs as they are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from app import checkpoint as ckpt
from app.data import sources
from app.data.preprocess import check_columns
from app.data.transform import PreprocessState, scorable, transform
from app.errors import UserError
from app.metrics import CalibrationSums, MetricSums, block_sums, softmax
from app.model import build_model

log = logging.getLogger(__name__)

SCORE_BATCH = 8192  # rows per model call when scoring labelled data


class Predictor:
    def __init__(self, state: PreprocessState, model: torch.nn.Module, epoch: int,
                 calibration: dict[str, Any] | None = None):
        self.state = state
        self.model = model.eval()
        self.epoch = epoch
        self.calibration = calibration
        classification = state.task == "classification"
        self.temperature = float(calibration["temperature"]) if calibration and classification else 1.0
        binary = classification and len(state.classes) == 2
        self.threshold = calibration.get("threshold") if calibration and binary else None

    @classmethod
    def from_checkpoint(cls, uri: str | Path) -> Predictor:
        with ckpt.local_copy(str(uri)) as directory:
            manifest = ckpt.verify(directory, str(uri))
            state = ckpt.load_preprocess_state(directory)
            model = load_model(directory, manifest, state, uri)
        return cls(state, model, manifest["epoch"], ckpt.calibration(manifest, str(uri)))

    def check_columns(self, df: pd.DataFrame) -> None:
        check_columns(df.columns, self.state.features, "input", reads=self.state.features)

    @torch.no_grad()
    def outputs(self, df: pd.DataFrame, batch_size: int | None = SCORE_BATCH) -> np.ndarray:
        """Raw model outputs: logits [n, classes], or the standardised prediction [n];
        the model sees at most `batch_size` rows per call (None: all at once). Bounded by
        default: an ensemble's activations take k times a single network's memory per row."""
        self.check_columns(df)
        arrays = transform(df, self.state, with_label=False)
        return self.forward(arrays["x_num"], arrays["x_cat"], batch_size)

    @torch.no_grad()
    def forward(self, x_num: np.ndarray, x_cat: np.ndarray, batch_size: int | None, *,
                calibrated: bool = True) -> np.ndarray:
        """The outputs of prepared arrays; logits divided by the checkpoint's temperature
        unless `calibrated` is False (what calibration itself is fitted on)."""
        x_num, x_cat = torch.from_numpy(x_num), torch.from_numpy(x_cat)
        step = batch_size or max(1, len(x_num))
        if len(x_num) <= step:
            out = self.model(x_num, x_cat)
        else:
            out = torch.cat([self.model(x_num[i:i + step], x_cat[i:i + step]) for i in range(0, len(x_num), step)])
        return (out / self.temperature if calibrated and self.temperature != 1.0 else out).numpy()

    def class_index(self, proba: np.ndarray) -> np.ndarray:
        """The predicted class of each row: the most probable, or for a binary model with a
        decision threshold, the second class where its probability reaches the threshold."""
        if self.threshold is None:
            return proba.argmax(axis=1)
        return (proba[:, 1] >= self.threshold).astype(np.int64)

    def prediction_columns(self, df: pd.DataFrame, batch_size: int | None = SCORE_BATCH) -> dict[str, np.ndarray]:
        """`prediction` (and `proba_<class>` for classification) for each row of `df`."""
        out = self.outputs(df, batch_size)
        if self.state.task == "classification":
            proba = softmax(out.astype(np.float64))
            columns = {"prediction": np.asarray(self.state.classes, dtype=object)[self.class_index(proba)]}
            columns.update({f"proba_{c}": proba[:, i] for i, c in enumerate(self.state.classes)})
            return columns
        return {"prediction": out.astype(np.float64) * self.state.target_std + self.state.target_mean}

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        """The input columns plus `prediction` (and `proba_<class>` for classification)."""
        result = df.copy()
        for name, values in self.prediction_columns(df).items():
            result[name] = values
        return result

    def schema(self) -> dict[str, Any]:
        """What a caller must send: feature columns and their types, the task, the classes."""
        kinds = {c.name: "numeric" for c in self.state.numeric} | {c.name: "categorical" for c in self.state.categorical}
        return {"features": [{"name": n, "kind": kinds[n], "type": self.state.input_types.get(n, "")}
                             for n in self.state.features],
                "label": self.state.label, "task": self.state.task,
                "classes": self.state.classes if self.state.task == "classification" else None}

    def score_batch(self, df: pd.DataFrame) -> dict[str, Any]:
        """Outputs (calibrated, and `raw` as the network gives them) and encoded labels of
        the labelled, scorable rows (for metrics), and the number of labelled rows left out
        because their label is unusable."""
        arrays = transform(df[df[self.state.label].notna()], self.state)
        keep = scorable(arrays["y"], self.state)
        raw = self.forward(arrays["x_num"][keep], arrays["x_cat"][keep], SCORE_BATCH, calibrated=False)
        out = raw / self.temperature if self.temperature != 1.0 else raw
        return {"outputs": out, "raw": raw, "y": arrays["y"][keep], "unusable": int((~keep).sum())}

    def sums(self, outputs: np.ndarray, y: np.ndarray) -> MetricSums:
        """`MetricSums` of calibrated outputs, counting each row as the class that
        `prediction` gives it (the decision threshold, if any)."""
        sums = MetricSums.of(outputs, y, self.state)
        if self.threshold is not None and len(y):
            k = sums.n_classes
            predicted = self.class_index(softmax(np.asarray(outputs, dtype=np.float64)))
            sums.confusion = np.bincount(np.asarray(y, dtype=np.int64) * k + predicted,
                                         minlength=k * k).reshape(k, k).astype(np.int64)
        return sums

    def evaluate(self, df: pd.DataFrame) -> dict[str, float]:
        s = self.score_batch(df)
        return self.sums(s["outputs"], s["y"]).metrics(self.state)


def load_model(directory: Path, manifest: dict[str, Any], state: PreprocessState, uri: str | Path) -> torch.nn.Module:
    """The model of a verified checkpoint folder, whatever its kind: (x_num, x_cat) -> outputs."""
    model_cfg = ckpt.model_config(manifest)
    if model_cfg.kind == "xgboost":
        return booster_module(directory, state, uri)
    if model_cfg.kind == "ensemble":
        from app.ensemble import EnsembleModule

        spec = json.loads((directory / ckpt.ENSEMBLE_FILE).read_text())["members"]
        members = [load_model(directory / m["folder"], json.loads((directory / m["folder"] / ckpt.MANIFEST).read_text()),
                              state, f"{uri}/{m['folder']}") for m in spec]
        return EnsembleModule(members, [m["weight"] for m in spec], state)
    try:
        model = build_model(model_cfg, state)
        model.load_state_dict(ckpt.load_model_weights(directory))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"checkpoint {uri}: weights do not fit its model config ({e})") from None
    return model


def booster_module(directory: Path, state: PreprocessState, uri: str | Path) -> torch.nn.Module:
    """The model of an xgboost checkpoint: its booster's rounds up to the best one."""
    from app.boosting import BoosterModule, load_booster
    from app.extras import require

    require("xgboost", "xgboost", what=f"checkpoint {uri} (model.kind: xgboost)")
    rounds = ckpt.load_train_state(directory)["progress"]["best_round"]
    return BoosterModule(load_booster(directory / ckpt.BOOSTER_FILE), state, rounds)


def load_predictor(checkpoint: str, key: str = "--checkpoint") -> Predictor:
    """The Predictor of a checkpoint named by a command's flag; a bad one is a UserError
    naming the flag."""
    try:
        return Predictor.from_checkpoint(checkpoint)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None
    except FileNotFoundError:
        raise UserError(f"{key} {checkpoint}: not a checkpoint folder (no manifest.json)") from None


def check_input(predictor: Predictor, uri: str, key: str, *, need_label: bool) -> sources.Source:
    """The source at `uri` (given as `key`), after checking it holds the model's columns."""
    source = sources.resolve(uri, key)
    names = sources.read_schema(source).names
    state = predictor.state
    check_columns(names, state.features, f"{key} {uri}", reads=state.features)
    if need_label and state.label not in names:
        raise UserError(f"{key} {uri}: no label column {state.label!r} to evaluate against")
    check_names(predictor, names, f"{key} {uri}", predicting=not need_label)
    return source


def check_names(predictor: Predictor, names: list[str], where: str, *, predicting: bool) -> None:
    """Refuse a column named like one the app adds to rows on their way (it would be
    overwritten, or break the write); warn about input columns that the output's
    prediction columns replace."""
    reserved = [n for n in names if n in sources.RESERVED_COLUMNS]
    if reserved:
        raise UserError(f"{where}: column {reserved[0]!r} has a name the app reserves for its own use; rename it")
    if predicting:
        replaced = [n for n in names if n in prediction_names(predictor.state)]
        if replaced:
            log.warning(f"{where} has column(s) {', '.join(replaced)}: the output replaces them with "
                        f"this model's predictions")


def prediction_names(state: PreprocessState) -> list[str]:
    """The columns `predict` adds to each row."""
    return ["prediction", *(f"proba_{c}" for c in state.classes)] if state.task == "classification" \
        else ["prediction"]


def read_types(state: PreprocessState) -> dict[str, pa.DataType]:
    """CSV read types: features as the checkpoint read them in training. Every other column,
    the label included, is read as text (`sources.csv_read_types`): passed through as
    written, and a label that is not a number or not a class is a row left out and
    counted, not a file that cannot be read."""
    return {name: pa.type_for_alias(t) for name, t in state.input_types.items() if name in state.features}


_LOADED: dict[str, Predictor] = {}  # per process: a Ray worker loads a checkpoint once, then reuses it
_KEEP_LOADED = 2  # models kept per process (a sweep scores many checkpoints in one job)


def cached_predictor(checkpoint: str) -> Predictor:
    """The Predictor of `checkpoint`, loaded once per process.

    Ray Data runs the scoring functions below as 1-CPU tasks on reused worker processes;
    each process loads the model on its first block only, and scores with one thread."""
    torch.set_num_threads(1)  # every call: the process may have run other work since
    predictor = _LOADED.pop(checkpoint, None)
    if predictor is None:
        predictor = Predictor.from_checkpoint(checkpoint)
    _LOADED[checkpoint] = predictor  # most recently used last
    while len(_LOADED) > _KEEP_LOADED:
        _LOADED.pop(next(iter(_LOADED)))
    return predictor


def _block_sums(df: pd.DataFrame, checkpoint: str, calibration: bool = False):
    """The metric sums of one block of raw labelled rows (`metrics.block_sums`). Scored rows
    never leave the task."""
    predictor = cached_predictor(checkpoint)
    return _sums(predictor, predictor.score_batch(df), calibration)


def _sums(predictor: Predictor, scored: dict[str, Any], calibration: bool = False):
    """`MetricSums` of a scored batch; with `calibration`, [those, `CalibrationSums` of the
    network's raw probabilities, and of the calibrated ones]."""
    sums = predictor.sums(scored["outputs"], scored["y"])
    sums.unusable = scored["unusable"]
    if not calibration:
        return sums
    return [sums, *(CalibrationSums.of(softmax(np.asarray(scored[k], dtype=np.float64)), scored["y"])
                    for k in ("raw", "outputs"))]


def _merged(total, part):
    return [a.merge(b) for a, b in zip(total, part)] if isinstance(total, list) else total.merge(part)


def _batches_here(ds) -> Iterator[pd.DataFrame]:
    """Batches of SCORE_BATCH rows, as pandas, of a Ray Dataset or of Arrow tables already in
    this process (no Ray Data job to start)."""
    if not isinstance(ds, list):
        yield from ds.iter_batches(batch_size=SCORE_BATCH, batch_format="pandas")
        return
    for table in ds:
        for at in range(0, table.num_rows, SCORE_BATCH):
            yield table.slice(at, SCORE_BATCH).to_pandas()


def score_tables(predictor: Predictor, tables, calibration: bool = False):
    """The metric sums of labelled rows in this process, SCORE_BATCH rows at a time: a Ray
    Dataset streamed here, or Arrow tables (the test split of a small run; a DataFrame given
    to `app.Model.evaluate`), so both score the same rows identically. (`calibration`: as
    `_sums`.)"""
    total = _empty(predictor.state, calibration)
    for df in _batches_here(tables):
        total = _merged(total, _sums(predictor, predictor.score_batch(df), calibration))
    return total


def _empty(state: PreprocessState, calibration: bool):
    return [MetricSums.empty(state), CalibrationSums(), CalibrationSums()] if calibration else MetricSums.empty(state)


def evaluate_dataset(checkpoint: str, ds, state: PreprocessState, details: bool = False, *,
                     here: bool = False, calibration: bool = False) -> dict[str, Any]:
    """Metrics of a checkpoint on a Ray Dataset of raw labelled rows, scored on the cluster.
    (`here`: `ds` may also be a list of Arrow tables.)

    Each block is scored by a task that returns only its fixed-size `MetricSums`; this
    process merges them as they stream in, so its memory does not grow with the data.
    `here`: this process scores the rows itself as they stream in, SCORE_BATCH at a time
    (small data: no Ray task to start, no process that has to import torch and load the
    model first; seconds on 2 cores). With `details`: {"metrics", "rows", and
    "confusion_matrix", "roc" and "pr" curves and the "reliability" diagram's bins, or
    "residuals" and a "sample" of (actual, predicted) pairs} instead of the bare metrics,
    all from the same fixed-size sums. `calibration` (classification, with `details`): also
    "calibration": {"before", "after"}, the `CalibrationSums` summaries of the network's raw
    and of the calibrated probabilities, from the same pass."""
    reliability = details and state.task == "classification"  # calibration sums, for the diagram
    calibration = calibration and reliability
    if here:
        total = score_tables(Predictor.from_checkpoint(checkpoint), ds, reliability)
    else:
        total = _empty(state, reliability)
        for part in block_sums(ds, _block_sums, checkpoint, reliability):
            total = _merged(total, part)
    if reliability:
        total, before, after = total
    metrics = total.metrics(state)
    if not details:
        return metrics
    out: dict[str, Any] = {"metrics": metrics, "rows": total.n, "unusable_labels": total.unusable}
    if calibration:
        out["calibration"] = {"before": before.summary(), "after": after.summary()}
    if state.task == "classification":
        out["confusion_matrix"] = total.confusion_matrix(state.classes)
        out["roc_auc_error_bound"] = total.auc_error_bound()
        out |= total.curves(state.classes)
        out["reliability"] = after.reliability()
    else:
        out["residuals"] = total.residual_summary()
        out["sample"] = total.sample()
    return out


def _predict_block(batch, checkpoint: str, model_batch: int):
    """Ray Data batch function: a block of raw rows (Arrow) plus the prediction columns.

    The input columns pass through untouched (types included); only the feature columns
    go through pandas for the model."""
    predictor = cached_predictor(checkpoint)
    columns = predictor.prediction_columns(batch.select(predictor.state.features).to_pandas(), model_batch)
    for name, values in columns.items():
        if name in batch.column_names:  # predicting over an earlier output: replace
            batch = batch.drop_columns([name])
        batch = batch.append_column(name, pa.array(values.tolist() if values.dtype == object else values))
    return batch


def predict_dataset(checkpoint: str, ds, concurrency: int, batch_size: int):
    """A lazy Dataset of the input rows plus predictions, in the order Ray Data keeps
    (input order when `preserve_order` is set): at most `concurrency` blocks are scored at
    once, each by a 1-CPU task that calls the model on `batch_size` rows at a time."""
    import ray.data

    scored = ds.map_batches(_predict_block, fn_args=(checkpoint, batch_size), batch_format="pyarrow",
                            batch_size=None, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=max(1, concurrency)),
                            zero_copy_batch=True)
    scored.context.raise_original_map_exception = True  # bad input (a word in a numeric column) as itself
    return scored
