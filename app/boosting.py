"""`model.kind: xgboost`: gradient-boosted trees beside the networks, from the same prepared
arrays, and predicting through the same `Predictor`.

    python -m app train --config configs/quickstart.yaml --set model.kind=xgboost

The trees read `transform.tree_inputs` of the prepared arrays (numeric columns with NaN
where a value was missing, categories as native categorical features), so the split, the
fitted preprocessing, the shards, the checkpoint format and every scoring path are the
networks'. Training runs in app/training/boost_loop.py under Ray Train's XGBoostTrainer.

`BoosterModule` wraps a booster as a module with the networks' interface, (x_num, x_cat)
-> class logits [n, classes] or the standardised prediction [n], so that calibration,
metrics, feature importance, `predict`, `evaluate` and `serve` need nothing of their own.
A binary model's margin m is the logit pair [0, m], whose softmax is XGBoost's probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.config import Config
from app.data.transform import PreprocessState, tree_feature_types, tree_inputs


def objective(state: PreprocessState) -> dict[str, Any]:
    """The task's objective and the validation metric that early stopping watches."""
    if state.task != "classification":
        return {"objective": "reg:squarederror", "eval_metric": "rmse"}
    if len(state.classes) == 2:
        return {"objective": "binary:logistic", "eval_metric": "logloss"}
    return {"objective": "multi:softprob", "num_class": len(state.classes), "eval_metric": "mlogloss"}


def params(cfg: Config, state: PreprocessState) -> dict[str, Any]:
    """`xgboost.train`'s parameters of a run. `seed_per_iteration`: round r draws its row and
    column samples from (seed, r) alone, so a run resumed from a checkpoint's booster grows
    the very trees an uninterrupted one grows."""
    x = cfg.model.xgboost
    out = {"tree_method": "hist", "eta": x.learning_rate, "max_depth": x.max_depth, "max_leaves": x.max_leaves,
           "min_child_weight": x.min_child_weight, "lambda": x.reg_lambda, "alpha": x.reg_alpha,
           "subsample": x.subsample, "colsample_bytree": x.colsample_bytree, "max_bin": x.max_bin,
           "seed": cfg.train.seed, "seed_per_iteration": True, "nthread": threads(cfg),
           "device": "cuda" if cfg.scaling.use_gpu else "cpu", "verbosity": 1, **objective(state)}
    if x.max_depth == 0:
        out["grow_policy"] = "lossguide"  # depthwise growth needs a depth limit
    return out


def threads(cfg: Config) -> int:
    return max(1, int(cfg.scaling.cpus_per_worker))


def logits(margins: np.ndarray, state: PreprocessState) -> np.ndarray:
    """XGBoost's margins as the networks' outputs (see the module's docstring)."""
    if state.task != "classification":
        return margins.reshape(-1)
    if len(state.classes) == 2:
        m = margins.reshape(-1)
        return np.stack([np.zeros_like(m), m], axis=1)
    return margins.reshape(len(margins), len(state.classes))


def margins(booster: Any, features: np.ndarray, rounds: int) -> np.ndarray:
    """The margins of `tree_inputs` rows from the booster's first `rounds` rounds."""
    return booster.inplace_predict(features, iteration_range=(0, rounds), predict_type="margin",
                                   validate_features=False)


class BoosterModule(torch.nn.Module):
    """A booster, its first `rounds` rounds, as a module with the networks' interface."""

    members = None

    def __init__(self, booster: Any, state: PreprocessState, rounds: int):
        super().__init__()
        self.booster, self.state, self.rounds = booster, state, rounds
        self.booster.set_param({"nthread": torch.get_num_threads()})  # the threads this process was given

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        features = tree_inputs(x_num.numpy(), x_cat.numpy(), self.state)
        if len(features) == 0:
            shape = (0, self.state.output_dim) if self.state.task == "classification" else (0,)
            return torch.zeros(shape)
        return torch.from_numpy(logits(margins(self.booster, features, self.rounds), self.state).astype(np.float32))


def load_booster(path: str | Path) -> Any:
    """The booster of a checkpoint's `BOOSTER_FILE` (UBJSON, read without unpickling)."""
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(Path(path).read_bytes()))
    return booster


MAX_NATIVE_CATEGORIES = 255  # as the HistGradientBoosting baseline (app/baselines.py)


def feature_types(state: PreprocessState) -> list[str]:
    """`tree_feature_types`, but a column of more than MAX_NATIVE_CATEGORIES categories (an id
    such as a tail number) is split as its category index, a number: partition splits over
    thousands of categories fit noise (on the flights table, 0.769 test accuracy against 0.802)."""
    types = tree_feature_types(state)
    offset = len(types) - len(state.categorical)
    for i, col in enumerate(state.categorical):
        if col.cardinality > MAX_NATIVE_CATEGORIES:
            types[offset + i] = "q"
    return types
