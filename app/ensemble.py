"""`model.kind: ensemble`: members of other kinds, weighted by greedy ensemble selection.

    python -m app train --config configs/quickstart.yaml --set model.kind=ensemble

The members (`model.ensemble.members`, default tabm and xgboost) train one after another on
the run's one split and fitted preprocessing, each in its own run folder under the run's
`members/<kind>/` (so each resumes, and one that finished is not trained again). Their best
checkpoints' outputs on the validation split then get weights by greedy ensemble selection
with replacement (Caruana et al., ICML 2004; as AutoGluon weights its models): start from
nothing and, `selection_rounds` times, add the member whose addition most lowers the
validation loss of the average (of probabilities for classification, of predictions for
regression); a member's weight is the share of rounds that added it, up to the round with
the lowest loss (so the ensemble is never worse on validation than its best member). The ensemble's
checkpoint holds a copy of every member's best checkpoint and the weights, and predicts
through `EnsembleModule`, a module with the networks' interface, so that calibration,
metrics, importance, `predict`, `evaluate` and `serve` treat it as one model.

The driver's side of an ensemble run is `runner.run_ensemble`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from app import storage
from app.config import Config
from app.data.transform import PreprocessState
from app.metrics import softmax


class EnsembleModule(torch.nn.Module):
    """Members' outputs averaged with weights: for classes, the log of the weighted mean of
    the members' probabilities (a softmax of it gives that mean); else the weighted mean of
    their standardised predictions."""

    members = None  # (its output has no member dimension: the networks' `members`)

    def __init__(self, members: list[torch.nn.Module], weights: list[float], state: PreprocessState):
        super().__init__()
        kept = [(m, w) for m, w in zip(members, weights) if w > 0]
        self.parts = torch.nn.ModuleList(m for m, _ in kept)
        self.weights = [float(w) for _, w in kept]
        self.classification = state.task == "classification"

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        outputs = [m.eval()(x_num, x_cat).double() for m in self.parts]
        if self.classification:
            probs = sum(w * torch.softmax(o, dim=1) for w, o in zip(self.weights, outputs))
            return torch.log(probs.clamp_min(1e-300)).float()
        return sum(w * o for w, o in zip(self.weights, outputs)).float()


def member_config(cfg: Config, kind: str, out_dir: str) -> Config:
    """The config a member trains with: the run's (resolved), with `model.kind` its own,
    and its own run folder, `<run folder>/members/<kind>`; the ensemble's tracking logs the
    run, not each member."""
    tree = copy.deepcopy(cfg.to_dict())
    tree["model"]["kind"] = kind
    tree["name"] = kind
    tree["run"]["storage"] = storage.join(out_dir, "members")
    tree["tracking"]["mlflow"] = tree["tracking"]["tensorboard"] = False
    return Config.model_validate(tree)


def loss(outputs: np.ndarray, y: np.ndarray, classification: bool) -> float:
    """The validation loss that selection lowers: log loss of averaged probabilities, or
    the mean squared error of averaged (standardised) predictions."""
    if classification:
        p = outputs[np.arange(len(y)), y.astype(np.int64)]
        return float(-np.mean(np.log(np.clip(p, 1e-15, 1.0))))
    return float(np.mean((outputs - y) ** 2))


def select(outputs: dict[str, np.ndarray], y: np.ndarray, state: PreprocessState, rounds: int
           ) -> tuple[dict[str, float], list[float]]:
    """Greedy selection with replacement: (each member's weight, the validation loss after
    each round kept). Ties go to the member listed first; a member never added weighs 0."""
    classification = state.task == "classification"
    scored = {k: softmax(np.asarray(o, dtype=np.float64)) if classification else np.asarray(o, dtype=np.float64)
              for k, o in outputs.items()}
    counts = dict.fromkeys(scored, 0)
    total = None
    path, chosen = [], []
    for r in range(rounds):
        best = None
        for kind, s in scored.items():
            candidate = s if total is None else (total * r + s) / (r + 1)
            value = loss(candidate, y, classification)
            if best is None or value < best[0] or (math.isnan(best[0]) and not math.isnan(value)):
                best = (value, kind, candidate)
        value, kind, total = best
        chosen.append(kind)
        path.append(value)
    # The weights of the best prefix of the path (the first, on ties): adding a member can
    # raise the loss, and the ensemble is never worse on validation than its best member.
    end = min(range(len(path)), key=lambda i: (math.isnan(path[i]), path[i])) + 1
    for kind in chosen[:end]:
        counts[kind] += 1
    return {k: c / end for k, c in counts.items()}, path[:end]


def mixture(outputs: dict[str, np.ndarray], weights: dict[str, float], state: PreprocessState) -> np.ndarray:
    """What `EnsembleModule` gives for these members' outputs (the ensemble's raw outputs)."""
    if state.task == "classification":
        probs = sum(w * softmax(np.asarray(outputs[k], dtype=np.float64)) for k, w in weights.items() if w > 0)
        return np.log(np.clip(probs, 1e-300, None))
    return sum(w * np.asarray(outputs[k], dtype=np.float64) for k, w in weights.items() if w > 0)
