"""One self-contained HTML page per run or sweep, plots embedded as PNG.

    python -m app report runs/quickstart          # -> runs/quickstart/report.html

Everything comes from the files a run leaves behind (metrics.json, baselines.json,
leaderboard.csv, config.yaml), so a report needs no Ray and no data, and can be made
again at any time, also for a run folder in object storage.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from typing import Any

from app import runs, storage
from app.config import TASK_METRICS
from app.errors import UserError
from app.extras import require


def write_report(run_dir: str) -> str:
    """Write <run_dir>/report.html; return its URI."""
    require("report", "matplotlib")
    if not storage.is_dir(run_dir):
        raise UserError(f"RUN_DIR {run_dir}: no such folder")
    raw = storage.read_text(storage.join(run_dir, runs.METRICS))
    if raw is None:
        raise UserError(f"RUN_DIR {run_dir}: no {runs.METRICS}; is it a finished run or sweep?")
    try:
        metrics = json.loads(raw)
        baselines = json.loads(storage.read_text(storage.join(run_dir, runs.BASELINES)) or "{}")
    except ValueError as e:
        raise UserError(f"RUN_DIR {run_dir}: unreadable JSON ({e})") from None
    leaderboard = storage.read_text(storage.join(run_dir, runs.LEADERBOARD))
    config = storage.read_text(storage.join(run_dir, runs.BEST_CONFIG if leaderboard else runs.CONFIG))
    page = render(run_dir, metrics, baselines=baselines, leaderboard=leaderboard, config=config,
                  trial_curves=storage.read_bytes(storage.join(run_dir, runs.CURVES)))
    out = storage.join(run_dir, runs.REPORT)
    storage.write_text(out, page)
    return out


# ---------------------------------------------------------------- page


def render(run_dir: str, metrics: dict[str, Any], *, baselines: dict[str, Any], leaderboard: str | None,
           config: str | None, trial_curves: bytes | None = None) -> str:
    task = metrics.get("task", "classification")
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    kind = "sweep" if leaderboard else "training run"
    facts = {"task": task, "epochs completed": metrics.get("epochs_completed"),
             "best epoch": metrics.get("best_epoch"), "best checkpoint": metrics.get("best_checkpoint"),
             "training rows": (metrics.get("rows") or {}).get("train"), "workers": metrics.get("num_workers"),
             "wall time": f"{metrics['wall_time_s']:.0f} s" if metrics.get("wall_time_s") else None}
    if leaderboard:
        facts.update({"best trial": metrics.get("best_trial"), "trials": metrics.get("trials")})
    sections = [
        f"<h1>{_e(name)} <small>{kind}</small></h1>",
        "<table class='facts'>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                                           for k, v in facts.items() if v is not None) + "</table>",
        "<h2>Metrics</h2>", metrics_table(task, metrics, baselines),
    ]
    history = metrics.get("history") or []
    if history:
        sections += ["<h2>Learning curves</h2>", _img(learning_curves(history, task, metrics.get("best_epoch")),
                                                      "learning curves")]
    details = metrics.get("test_details") or {}
    if details.get("confusion_matrix"):
        sections += ["<h2>Confusion matrix (test split)</h2>",
                     _img(confusion_plot(details["confusion_matrix"]), "confusion matrix")]
    elif details.get("sample"):
        sections += ["<h2>Predicted vs actual (test split)</h2>",
                     _img(scatter_plot(details["sample"]), "predicted vs actual")]
    if metrics.get("feature_importance"):
        metric = (metrics.get("importance") or {}).get("metric") or ("log_loss" if task == "classification" else "rmse")
        sections += ["<h2>Feature importance</h2>",
                     _img(importance_plot(metrics["feature_importance"], metric), "feature importance")]
    if leaderboard:
        sections += ["<h2>Leaderboard</h2>", csv_table(leaderboard)]
    if trial_curves:
        sections += ["<h2>Trials</h2>", _img(trial_curves, "validation metric per trial")]
    if config:
        sections += ["<h2>Config</h2>", f"<pre>{_e(config)}</pre>"]
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(name)} report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}"
            f"<footer>made {made} by python -m app report</footer></body></html>")


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1 small{font-size:55%;color:#777;font-weight:normal}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:right}
th{background:#f4f4f4} table.facts th,table.facts td{text-align:left}
img{max-width:100%;display:block;margin:.5em 0 1.5em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:85%}
footer{color:#999;font-size:80%;margin-top:3em}
"""


def metrics_table(task: str, metrics: dict[str, Any], baselines: dict[str, Any]) -> str:
    names = TASK_METRICS[task]
    rows = [("network", "valid", metrics.get("valid") or {}), ("network", "test", metrics.get("test") or {})]
    for model, result in baselines.items():
        rows += [(model, "valid", result.get("valid") or {}), (model, "test", result.get("test") or {})]
    head = "<tr><th>model</th><th>split</th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    body = "".join(f"<tr><td>{_e(m)}</td><td>{s}</td>" + "".join(f"<td>{_num(v.get(n))}</td>" for n in names)
                   + "</tr>" for m, s, v in rows)
    return f"<table class='metrics'>{head}{body}</table>"


def csv_table(text: str) -> str:
    import csv

    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return "<p>(empty)</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_e(_short(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table class='leaderboard'><tr>{head}</tr>{body}</table>"


def _short(cell: str) -> str:
    try:
        v = float(cell)
    except ValueError:
        return cell
    return cell if v.is_integer() or "e" in cell.lower() else f"{v:.4g}"


def _num(v: Any) -> str:
    return "n/a" if v is None or not isinstance(v, (int, float)) or v != v else f"{v:.4f}"


def _e(v: Any) -> str:
    return html.escape(str(v))


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


# ---------------------------------------------------------------- plots


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def learning_curves(history: list[dict[str, Any]], task: str, best_epoch: int | None) -> bytes:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    epochs = [r["epoch"] for r in history]
    for key in ("train_loss", "valid_loss"):
        left.plot(epochs, [r.get(key) for r in history], marker="o", markersize=3, label=key)
    left.set_title("loss")
    for key in TASK_METRICS[task]:
        if key != "log_loss" and any(r.get(key) is not None for r in history):
            right.plot(epochs, [r.get(key) for r in history], marker="o", markersize=3, label=f"valid {key}")
    right.set_title("validation metrics")
    for ax in (left, right):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label="best epoch")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png(fig)


def confusion_plot(cm: dict[str, Any]) -> bytes:
    import numpy as np

    plt = pyplot()
    matrix, labels = np.asarray(cm["matrix"]), [str(c) for c in cm["labels"]]
    size = min(12.0, 2.5 + 0.6 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=100)
    shown = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if len(labels) <= 20:
        top = matrix.max() or 1
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > top / 2 else "black", fontsize=9)
    return png(fig)


def scatter_plot(sample: dict[str, list[float]]) -> bytes:
    import numpy as np

    plt = pyplot()
    actual, predicted = np.asarray(sample["actual"]), np.asarray(sample["predicted"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    left.scatter(actual, predicted, s=6, alpha=0.5)
    lo, hi = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    left.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--")
    left.set_xlabel("actual")
    left.set_ylabel("predicted")
    left.set_title(f"predicted vs actual ({len(actual)} test rows)")
    right.hist(actual - predicted, bins=40)
    right.set_xlabel("residual (actual - predicted)")
    right.set_title("residuals")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return png(fig)


IMPORTANCE_BARS = 30  # features shown in the importance chart (the most important)


def importance_plot(ranking: list[dict[str, Any]], metric: str) -> bytes:
    """Permutation importance as horizontal bars, most important on top, the standard
    deviation over shuffles as error bars."""
    plt = pyplot()
    shown = sorted(ranking, key=lambda r: -r["importance"])[:IMPORTANCE_BARS][::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.3 * len(shown)), dpi=100)
    ax.barh(range(len(shown)), [r["importance"] for r in shown], xerr=[r["stddev"] for r in shown], capsize=3,
            color="#4c72b0", ecolor="#333")
    ax.set_yticks(range(len(shown)), [str(r["feature"]) for r in shown])
    ax.axvline(0, color="grey", linewidth=1)
    more = f", the {len(shown)} most important of {len(ranking)}" if len(ranking) > len(shown) else ""
    ax.set_title(f"increase in {metric} when the feature is shuffled (mean ± stddev{more})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return png(fig)
