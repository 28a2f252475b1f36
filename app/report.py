"""One self-contained HTML page per run or sweep, plots embedded as PNG.

    python -m app report runs/quickstart          # -> runs/quickstart/report.html

Everything comes from the files a run leaves behind (metrics.json, baselines.json,
leaderboard.csv, config.yaml, the best checkpoint's preprocess.json), so a report needs no
Ray and no data, and can be made again at any time, also for a run folder in object storage.
Its curves (ROC, precision-recall, reliability) come from the fixed-size sums the test
split was scored with (app/metrics.py), stored in metrics.json's `test_details`. A run that
logs to MLflow gets the report as an artifact of its MLflow run too.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
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
                  trial_curves=storage.read_bytes(storage.join(run_dir, runs.CURVES)),
                  preprocess=read_preprocess(run_dir, metrics.get("best_checkpoint")))
    out = storage.join(run_dir, runs.REPORT)
    storage.write_text(out, page)
    if not leaderboard and config:  # a training run's MLflow run (a sweep's trials have their own)
        from app.tracking import log_report

        log_report(config, run_dir, page)
    return out


PREPROCESS_FILE = "preprocess.json"  # in each checkpoint (app/checkpoint.py): the fitted preprocessing


def read_preprocess(run_dir: str, best_checkpoint: str | None) -> dict[str, Any] | None:
    """The best checkpoint's fitted preprocessing as JSON, found where metrics.json says, or
    in this folder (a run folder that was moved or copied); None if neither has it."""
    if not best_checkpoint:
        return None
    for checkpoint in (best_checkpoint, storage.join(run_dir, best_checkpoint.rstrip("/").rsplit("/", 1)[-1])):
        try:
            text = storage.read_text(storage.join(checkpoint, PREPROCESS_FILE))
        except (OSError, ValueError):  # a location this machine cannot read
            text = None
        if text:
            try:
                return json.loads(text)
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------- page


def render(run_dir: str, metrics: dict[str, Any], *, baselines: dict[str, Any], leaderboard: str | None,
           config: str | None, trial_curves: bytes | None = None, preprocess: dict[str, Any] | None = None) -> str:
    task = metrics.get("task", "classification")
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    kind = "sweep" if leaderboard else "training run"
    curves = metrics.get("boosting_curves")  # xgboost: rounds, not epochs
    history = metrics.get("history") or []
    best_round = history[-1].get("best_round") if curves and history else None
    facts = {"task": task, ("rounds completed" if curves else "epochs completed"): metrics.get("epochs_completed"),
             ("best round" if curves else "best epoch"): best_round if curves else metrics.get("best_epoch"),
             "best checkpoint": metrics.get("best_checkpoint"),
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
    if not baselines and not leaderboard:
        sections.append("<p class='note'>No baselines: <code>report.baselines</code> was off for this run "
                         "(or it had more rows than <code>report.baselines_auto_rows</code>); "
                         "<code>python -m app baseline</code> fits them.</p>")
    summary = data_summary(metrics, preprocess)
    if summary:
        sections += ["<h2>Data</h2>", summary]
    if curves:
        sections += ["<h2>Boosting curves</h2>", _img(boosting_curves(curves, best_round), "boosting curves")]
    elif history:
        sections += ["<h2>Learning curves</h2>", _img(learning_curves(history, task, metrics.get("best_epoch")),
                                                      "learning curves")]
    if metrics.get("ensemble"):
        sections += ["<h2>Ensemble members</h2>", ensemble_table(task, metrics["ensemble"])]
    details = metrics.get("test_details") or {}
    if details.get("confusion_matrix"):
        sections += ["<h2>Confusion matrix (test split)</h2>",
                     _img(confusion_plot(details["confusion_matrix"]), "confusion matrix"),
                     "<h2>Per-class metrics (test split)</h2>", per_class_table(details["confusion_matrix"])]
        if details.get("roc"):
            sections += ["<h2>ROC and precision-recall curves (test split)</h2>",
                         _img(roc_pr_plot(details["roc"], details.get("pr") or []), "ROC and precision-recall curves")]
        if details.get("reliability"):
            sections += ["<h2>Calibration (test split)</h2>", calibration_note(metrics),
                         _img(reliability_plot(details["reliability"]), "reliability diagram")]
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
.note{color:#555} th.left,td.left{text-align:left}
"""


def metrics_table(task: str, metrics: dict[str, Any], baselines: dict[str, Any]) -> str:
    names = TASK_METRICS[task]
    rows = [("this run", "valid", metrics.get("valid") or {}), ("this run", "test", metrics.get("test") or {})]
    for model, result in baselines.items():
        rows += [(model, "valid", result.get("valid") or {}), (model, "test", result.get("test") or {})]
    head = "<tr><th>model</th><th>split</th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    body = "".join(f"<tr><td>{_e(m)}</td><td>{s}</td>" + "".join(f"<td>{_num(v.get(n))}</td>" for n in names)
                   + "</tr>" for m, s, v in rows)
    return f"<table class='metrics'>{head}{body}</table>"


def ensemble_table(task: str, ensemble: dict[str, Any]) -> str:
    """Each member's weight (greedy selection on validation) and its own scores."""
    names = ("valid_loss", *TASK_METRICS[task])
    head = "<tr><th>member</th><th>weight</th><th>split</th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    body = ""
    for kind, member in ensemble["members"].items():
        for split in ("valid", "test"):
            values = member.get(split) or {}
            if split == "test":
                values = {"valid_loss": None, **values}
            body += (f"<tr><td>{_e(kind)}</td><td>{_num(ensemble['weights'].get(kind))}</td><td>{split}</td>"
                     + "".join(f"<td>{_num(values.get(n))}</td>" for n in names) + "</tr>")
    return f"<table class='metrics'>{head}{body}</table>"


def per_class_table(cm: dict[str, Any]) -> str:
    """Precision, recall, F1 and support of each class, from the confusion matrix."""
    from app.metrics import per_class

    scores = per_class(cm["matrix"])
    head = "<tr><th class='left'>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    body = "".join(f"<tr><td class='left'>{_e(label)}</td><td>{_num(p)}</td><td>{_num(r)}</td><td>{_num(f)}</td>"
                   f"<td>{n}</td></tr>" for label, p, r, f, n in
                   zip(cm["labels"], scores["precision"], scores["recall"], scores["f1"], scores["support"]))
    return f"<table class='per-class'>{head}{body}</table>"


def calibration_note(metrics: dict[str, Any]) -> str:
    """One line on the calibration fitted after training, with the test split's figures."""
    cal = metrics.get("calibration") or {}
    test = cal.get("test") or {}
    if not test.get("after"):
        return "<p class='note'>No calibration was fitted (<code>train.calibration</code>).</p>"
    before, after = test.get("before") or {}, test["after"]
    figures = ", ".join(f"{name} {_num(before.get(key))} &rarr; {_num(after.get(key))}"
                        for key, name in (("log_loss", "log loss"), ("brier", "Brier"), ("ece", "ECE")))
    how = (f"temperature scaling (T = {cal['temperature']:.3g})" if cal.get("method") == "temperature"
           and isinstance(cal.get("temperature"), (int, float)) else str(cal.get("method", "calibration")))
    return f"<p class='note'>Calibrated by {_e(how)} on the validation split: {figures} on the test split.</p>"


DATA_COLUMNS = 200  # rows of the data summary's column table at most


def data_summary(metrics: dict[str, Any], preprocess: dict[str, Any] | None) -> str:
    """Rows per split, columns by type (missing shares in training, categories), and the
    label: its balance on the test split (classification) or its training mean and spread."""
    parts = []
    rows = dict(metrics.get("rows") or {})
    scored = (metrics.get("test_details") or {}).get("rows")
    if rows and "test" not in rows and isinstance(scored, int):
        rows["test"] = scored  # the labelled test rows scored
    if rows:
        parts.append("<table class='rows'><tr>" + "".join(f"<th>{_e(k)} rows</th>" for k in rows) + "</tr><tr>"
                     + "".join(f"<td>{_e(v)}</td>" for v in rows.values()) + "</tr></table>")
    if preprocess:
        numeric, categorical = preprocess.get("numeric") or [], preprocess.get("categorical") or []
        dropped = preprocess.get("dropped") or []
        missing, types = preprocess.get("missing") or {}, preprocess.get("input_types") or {}
        parts.append(f"<p>{len(numeric)} numeric and {len(categorical)} categorical feature column(s)"
                     + (f"; dropped (no value in training): {_e(', '.join(dropped))}" if dropped else "")
                     + (f"; label <code>{_e(preprocess.get('label'))}</code>" if preprocess.get("label") else "")
                     + ".</p>")
        table = [(c["name"], "numeric", types.get(c["name"], ""), missing.get(c["name"]), "") for c in numeric]
        table += [(c["name"], "categorical", types.get(c["name"], ""), missing.get(c["name"]),
                   len(c.get("categories") or [])) for c in categorical]
        table += [(name, "dropped", types.get(name, ""), missing.get(name), "") for name in dropped]
        head = ("<tr><th class='left'>column</th><th class='left'>kind</th><th class='left'>type read</th>"
                "<th>missing in training</th><th>categories seen</th></tr>")
        body = "".join(f"<tr><td class='left'>{_e(n)}</td><td class='left'>{k}</td><td class='left'>{_e(t)}</td>"
                       f"<td>{'n/a' if m is None else f'{100 * m:.1f}%'}</td><td>{c}</td></tr>"
                       for n, k, t, m, c in table[:DATA_COLUMNS])
        more = f"<p class='note'>(the first {DATA_COLUMNS} of {len(table)} columns)</p>" if len(table) > DATA_COLUMNS else ""
        parts.append(f"<table class='columns'>{head}{body}</table>{more}")
    parts.append(label_summary(metrics, preprocess))
    return "".join(p for p in parts if p) if any(parts) else ""


def label_summary(metrics: dict[str, Any], preprocess: dict[str, Any] | None) -> str:
    cm = (metrics.get("test_details") or {}).get("confusion_matrix")
    if cm:
        support = [sum(row) for row in cm["matrix"]]
        total = sum(support) or 1
        cells = "".join(f"<tr><td class='left'>{_e(c)}</td><td>{n}</td><td>{100 * n / total:.1f}%</td></tr>"
                        for c, n in zip(cm["labels"], support))
        return ("<p>Label balance on the test split:</p><table class='balance'><tr><th class='left'>class</th>"
                f"<th>rows</th><th>share</th></tr>{cells}</table>")
    if preprocess and preprocess.get("task") == "regression":
        return (f"<p>Label <code>{_e(preprocess.get('label'))}</code> in training: mean "
                f"{preprocess.get('target_mean', 0.0):.4g}, standard deviation {preprocess.get('target_std', 1.0):.4g}.</p>")
    return ""


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


def boosting_curves(curves: dict[str, list[float]], best_round: int | None) -> bytes:
    """xgboost: the training and validation loss (the task's: log loss, or RMSE on the
    standardised label) after every round."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.8), dpi=100)
    for split in ("train", "valid"):
        values = curves.get(split) or []
        ax.plot(range(1, len(values) + 1), values, linewidth=1.2, label=f"{split} loss")
    if best_round:
        ax.axvline(best_round, color="grey", linestyle=":", linewidth=1, label="best round")
    ax.set_xlabel("boosting round")
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


CURVE_CLASSES = 10  # classes drawn in the ROC and precision-recall plots at most (those with the most rows)


def roc_pr_plot(roc: list[dict[str, Any]], pr: list[dict[str, Any]]) -> bytes:
    """ROC (left) and precision-recall (right) curves, one-vs-rest per class (the positive
    class alone for two), with each curve's AUC or average precision in the legend."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    shown = {c["class"] for c in roc[:CURVE_CLASSES]}
    for curve in roc:
        if curve["class"] in shown:
            left.plot(curve["fpr"], curve["tpr"], linewidth=1.5, label=f"{curve['class']} (AUC {curve['auc']:.3f})")
    left.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    left.set_xlabel("false positive rate")
    left.set_ylabel("true positive rate")
    left.set_title("ROC" + (" (one vs rest)" if len(roc) > 1 else f" (positive class {roc[0]['class']})"))
    for curve in pr:
        if curve["class"] in shown:
            right.plot(curve["recall"], curve["precision"], linewidth=1.5,
                       label=f"{curve['class']} (AP {curve['average_precision']:.3f})")
    right.set_xlabel("recall")
    right.set_ylabel("precision")
    right.set_title("precision-recall")
    for ax in (left, right):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is left else "lower left")
    return png(fig)


def reliability_plot(rel: dict[str, Any]) -> bytes:
    """Accuracy against mean confidence per confidence bin (the diagonal is perfect
    calibration), and below it how many rows fall in each bin."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), dpi=100, height_ratios=[3, 1], sharex=True)
    edges = rel["edges"]
    filled = [i for i, n in enumerate(rel["rows"]) if n]
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    top.plot([rel["confidence"][i] for i in filled], [rel["accuracy"][i] for i in filled], marker="o",
             markersize=4, label="model")
    top.bar([edges[i] for i in filled], [rel["accuracy"][i] for i in filled],
            width=[edges[i + 1] - edges[i] for i in filled], align="edge", alpha=0.25, edgecolor="#333")
    top.set_ylabel("accuracy")
    top.set_title(f"reliability of the top class's probability (ECE {rel['ece']:.4f})", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(edges[:-1], rel["rows"], width=[b - a for a, b in itertools.pairwise(edges)], align="edge",
               color="#888")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("rows")
    for ax in (top, bottom):
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    return png(fig)
