"""`Predictor`: a model and its preprocessing, rebuilt from a checkpoint folder alone.

It is the one path from raw rows to predictions: the test scoring at the end of
`train`, and `evaluate`, `predict` and `serve`, so preprocessing cannot drift between them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from app.config import ModelConfig
from app.data.preprocess import PreprocessState, scorable, transform
from app.errors import UserError
from app.metrics import compute_metrics, softmax
from app.model import build_model
from app.training import checkpoint as ckpt


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

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        """The input columns plus `prediction` (and `proba_<class>` for classification)."""
        out = self.outputs(df)
        result = df.copy()
        if self.state.task == "classification":
            proba = softmax(out.astype(np.float64))
            result["prediction"] = np.asarray(self.state.classes, dtype=object)[proba.argmax(axis=1)]
            for i, c in enumerate(self.state.classes):
                result[f"proba_{c}"] = proba[:, i]
        else:
            result["prediction"] = out.astype(np.float64) * self.state.target_std + self.state.target_mean
        return result

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


def evaluate_dataset(checkpoint: str, ds, state: PreprocessState) -> dict[str, float]:
    """Metrics of a checkpoint on a Ray Dataset of raw labelled rows, scored on the cluster."""
    import ray.data

    scored = ds.map_batches(_BatchScorer, fn_constructor_args=(checkpoint,), batch_format="pandas",
                            compute=ray.data.ActorPoolStrategy(size=1), batch_size=4096).to_pandas()
    if scored.empty:
        return {}
    outputs = np.stack(scored["outputs"].to_numpy()) if state.task == "classification" else scored["outputs"].to_numpy()
    return compute_metrics(outputs, scored["y"].to_numpy(), state)
