"""The `evaluate` command: a checkpoint scored on labelled data with Ray Data.

    python -m app evaluate --checkpoint runs/quickstart/checkpoint_epoch_0012 --data holdout.csv

The checkpoint, the files and their columns are checked on the driver before Ray starts;
each block is scored by a Ray task, and the metrics are computed from every scored row.
"""

from __future__ import annotations

from typing import Any

from app.data import sources
from app.predictor import Predictor, evaluate_dataset, read_types


def run_evaluate(checkpoint: str, predictor: Predictor, source: sources.Source) -> dict[str, Any]:
    """Metrics of the checkpoint on every labelled row of `source`, with a confusion matrix
    (classification) or a residual summary (regression)."""
    state = predictor.state
    ds = sources.read_dataset(source, read_types(state, with_label=True))
    result = sources.read_step(lambda: evaluate_dataset(checkpoint, ds, state, details=True), source)
    return {"checkpoint": checkpoint, "data": source.uri, "task": state.task, "epoch": predictor.epoch,
            **result}


def format_evaluation(result: dict[str, Any]) -> str:
    lines = [f"{result['task']} on {result['rows']} labelled rows of {result['data']}", ""]
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
    return "\n".join(lines)
