"""`Predictor`: a model and its preprocessing, rebuilt from a checkpoint folder alone.

It is the one path from raw rows to predictions: the test scoring at the end of
`train`, and `evaluate`, `predict` and `serve`, so preprocessing cannot drift between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from app.config import ModelConfig
from app.data.preprocess import PreprocessState, scorable, transform
from app.errors import UserError
from app.metrics import compute_metrics, confusion_matrix, residual_summary, softmax
from app.model import build_model
from app.training import checkpoint as ckpt

SAMPLE_POINTS = 1000  # (actual, predicted) pairs kept for a regression's plot


class Predictor:
    def __init__(self, state: PreprocessState, model: torch.nn.Module, epoch: int):
        self.state = state
        self.model = model.eval()
        self.epoch = epoch

    @classmethod
    def from_checkpoint(cls, uri: str | Path) -> Predictor:
        with ckpt.local_copy(str(uri)) as directory:
            manifest = ckpt.verify(directory, str(uri))
            state = ckpt.load_preprocess_state(directory)
            model = build_model(ModelConfig.model_validate(manifest["model"]), manifest["numeric_width"],
                                manifest["cardinalities"], manifest["output_dim"])
            try:
                model.load_state_dict(ckpt.load_model_weights(directory))
            except RuntimeError as e:
                raise UserError(f"checkpoint {uri}: weights do not fit its model config ({e})") from None
        return cls(state, model, manifest["epoch"])

    def check_columns(self, df: pd.DataFrame) -> None:
        absent = [c for c in self.state.features if c not in df.columns]
        if absent:
            raise UserError(f"input is missing feature column(s): {', '.join(absent)}")

    @torch.no_grad()
    def outputs(self, df: pd.DataFrame) -> np.ndarray:
        """Raw model outputs: logits [n, classes], or the standardised prediction [n]."""
        self.check_columns(df)
        arrays = transform(df, self.state, with_label=False)
        out = self.model(torch.from_numpy(arrays["x_num"]), torch.from_numpy(arrays["x_cat"]))
        return out.numpy()

    def prediction_columns(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """`prediction` (and `proba_<class>` for classification) for each row of `df`."""
        out = self.outputs(df)
        if self.state.task == "classification":
            proba = softmax(out.astype(np.float64))
            columns = {"prediction": np.asarray(self.state.classes, dtype=object)[proba.argmax(axis=1)]}
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

    def score_batch(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Outputs and encoded labels of the labelled, scorable rows (for metrics)."""
        arrays = transform(df[df[self.state.label].notna()], self.state)
        keep = scorable(arrays["y"], self.state)
        with torch.no_grad():
            out = self.model(torch.from_numpy(arrays["x_num"][keep]), torch.from_numpy(arrays["x_cat"][keep]))
        return {"outputs": out.numpy(), "y": arrays["y"][keep]}

    def evaluate(self, df: pd.DataFrame) -> dict[str, float]:
        s = self.score_batch(df)
        return compute_metrics(s["outputs"], s["y"], self.state)


class _BatchScorer:
    """Ray Data actor: loads the checkpoint once, scores batches of raw rows."""

    def __init__(self, checkpoint: str):
        torch.set_num_threads(1)
        self.predictor = Predictor.from_checkpoint(checkpoint)

    def __call__(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        return self.predictor.score_batch(df)


def evaluate_dataset(checkpoint: str, ds, state: PreprocessState, details: bool = False) -> dict[str, Any]:
    """Metrics of a checkpoint on a Ray Dataset of raw labelled rows, scored on the cluster.

    With `details`: {"metrics", "rows", and "confusion_matrix", or "residuals" and a
    "sample" of (actual, predicted) pairs} instead of the bare metrics."""
    import ray.data

    scored = ds.map_batches(_BatchScorer, fn_constructor_args=(checkpoint,), batch_format="pandas",
                            compute=ray.data.ActorPoolStrategy(size=1), batch_size=4096).to_pandas()
    if scored.empty:
        outputs, y = np.zeros((0, state.output_dim)), np.zeros(0, dtype=np.int64)
    else:
        outputs = np.stack(scored["outputs"].to_numpy()) if state.task == "classification" \
            else scored["outputs"].to_numpy()
        y = scored["y"].to_numpy()
    metrics = compute_metrics(outputs, y, state)
    if not details:
        return metrics
    out: dict[str, Any] = {"metrics": metrics, "rows": len(y)}
    if state.task == "classification":
        out["confusion_matrix"] = confusion_matrix(outputs, y, state.classes)
    else:
        out["residuals"] = residual_summary(outputs, y, state)
        keep = np.sort(np.random.default_rng(0).choice(len(y), size=min(len(y), SAMPLE_POINTS), replace=False))
        out["sample"] = {"actual": (y[keep].astype(np.float64) * state.target_std + state.target_mean).tolist(),
                         "predicted": (outputs[keep].astype(np.float64) * state.target_std
                                       + state.target_mean).tolist()}
    return out


class _BatchPredictor:
    """Ray Data actor: loads the checkpoint once, appends prediction columns to each batch.

    The batch stays Arrow: input columns pass through untouched (types included); only
    the feature columns go through pandas for the model."""

    def __init__(self, checkpoint: str, threads: int):
        torch.set_num_threads(threads)
        self.predictor = Predictor.from_checkpoint(checkpoint)

    def __call__(self, batch):
        import pyarrow as pa

        features = self.predictor.state.features
        columns = self.predictor.prediction_columns(batch.select(features).to_pandas())
        for name, values in columns.items():
            if name in batch.column_names:  # predicting over an earlier output: replace
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values.tolist() if values.dtype == object else values))
        return batch


def predict_dataset(checkpoint: str, ds, actors: int, batch_size: int, threads: int = 1):
    """A lazy Dataset of the input rows plus predictions, in input order, scored by an
    autoscaling pool of 1..`actors` actors that each load the model once."""
    import ray.data

    return ds.map_batches(_BatchPredictor, fn_constructor_args=(checkpoint, threads), batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
                          batch_size=batch_size, num_cpus=threads, zero_copy_batch=True)
