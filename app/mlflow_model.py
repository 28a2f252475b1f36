"""A checkpoint as an MLflow `pyfunc` model: what a training run logs to its MLflow run.

    mlflow.pyfunc.load_model("runs:/<MLflow run id>/model").predict(df)   # = Predictor.predict(df)

app/tracking.py logs it as a model from code: MLflow keeps a copy of this file beside the
checkpoint (the model's `checkpoint` artifact) and runs it when the model is loaded. So
loading needs this package (`raytab`) installed, as any other way of scoring a checkpoint
does, and the predictions are the app's own, through the one scoring path (app/predictor.py).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CheckpointModel(PythonModel):
    """`predict(df)`: the input columns plus `prediction` (and `proba_<class>` for
    classification), as `python -m app predict` writes them."""

    def load_context(self, context) -> None:
        from app.predictor import Predictor

        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict(model_input)


mlflow.models.set_model(CheckpointModel())
