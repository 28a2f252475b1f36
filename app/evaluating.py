"""The `evaluate` command: a checkpoint scored on labelled data with Ray Data.

    python -m app evaluate --checkpoint runs/quickstart/checkpoint_epoch_0012 --data holdout.csv [--importance]

The checkpoint, the files and their columns are checked on the driver before Ray starts;
each block is scored by a Ray task, and the metrics are computed from every scored row.
With `--importance`, the permutation importance of each feature follows (app/importance.py).
"""

from __future__ import annotations

import logging
from typing import Any

from app.data import sources
from app.data.transform import PreprocessState
from app.errors import UserError
from app.predictor import Predictor, evaluate_dataset, read_types

log = logging.getLogger(__name__)


def run_evaluate(checkpoint: str, predictor: Predictor, source: sources.Source,
                 importance: dict[str, int] | None = None) -> dict[str, Any]:
    """Metrics of the checkpoint on every labelled row of `source`, with a confusion matrix
    (classification) or a residual summary (regression); with `importance` (its options:
    repeats, seed, max_rows), each feature's permutation importance too, from a second
    read of only the feature and label columns."""
    from app import importance as imp

    state = predictor.state
    ds = sources.read_dataset(source, read_types(state))
    result = sources.read_step(lambda: evaluate_dataset(checkpoint, ds, state, details=True), source)
    check_scored(result, state, f"--data {source.uri}")
    result = {"checkpoint": checkpoint, "data": source.uri, "task": state.task, "epoch": predictor.epoch, **result}
    if importance is not None:
        columns = (*state.features, state.label)
        ds = sources.read_dataset(source, read_types(state), columns=columns)
        result.update(sources.read_step(lambda: imp.importance(checkpoint, predictor, ds, **importance), source))
    return result


def check_scored(result: dict[str, Any], state: PreprocessState, where: str) -> None:
    """Say how many labelled rows were left out for an unusable label, and refuse data with
    no row to score (its metrics would be empty)."""
    unusable = result.get("unusable_labels", 0)
    why = "not a number" if state.task == "regression" else "not a class seen in training"
    if result["rows"] == 0:
        raise UserError(f"{where}: no row has a usable label {state.label!r} to score"
                        + (f" ({unusable} labelled row(s) hold a label that is {why})" if unusable else ""))
    if unusable:
        log.warning(f"{where}: {unusable} row(s) have a label {state.label!r} that is {why}; they are left out "
                    f"of the metrics")


def format_evaluation(result: dict[str, Any]) -> str:
    left_out = f" ({result['unusable_labels']} left out: unusable label)" if result.get("unusable_labels") else ""
    lines = [f"{result['task']} on {result['rows']} labelled rows of {result['data']}{left_out}", ""]
    width = max(len(k) for k in result["metrics"]) if result["metrics"] else 0
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in result["metrics"].items() if k != "loss"]
    if "confusion_matrix" in result:
        cm = result["confusion_matrix"]
        names = [str(c) for c in cm["labels"]]
        w = max(6, *(len(n) for n in names), *(len(str(v)) for row in cm["matrix"] for v in row))
        lines += ["", "confusion matrix (rows: actual, columns: predicted)",
                  " " * (w + 2) + "".join(f"{n:>{w + 2}}" for n in names)]
        lines += [f"{n:>{w + 2}}" + "".join(f"{v:>{w + 2}}" for v in row) for n, row in zip(names, cm["matrix"])]
    elif result.get("residuals"):
        lines += ["", "residuals (actual - predicted)"]
        lines += [f"  {k:<8}  {v:.4f}" for k, v in result["residuals"].items()]
    if result.get("feature_importance"):
        lines += ["", *format_importance(result["feature_importance"], result["importance"])]
    return "\n".join(lines)


def format_importance(ranking: list[dict[str, Any]], about: dict[str, Any]) -> list[str]:
    """The table of `evaluate --importance`: most important first."""
    width = max(len("feature"), *(len(r["feature"]) for r in ranking))
    lines = [(f"feature importance: increase in {about['metric']} when the feature is shuffled "
              f"(mean ± stddev of {about['repeats']} shuffles of {about['rows']} rows)"),
             f"  {'feature':<{width}}  {'importance':>10}    {'stddev':>8}"]
    return lines + [f"  {r['feature']:<{width}}  {r['importance']:>10.4f}  ± {r['stddev']:>8.4f}" for r in ranking]
