"""scikit-learn baselines on exactly the run's split and preprocessing.

    python -m app baseline --config configs/quickstart.yaml

A RandomForest (100 trees) and a HistGradientBoosting model are fitted on the training
split, in parallel as Ray tasks, and scored on the validation and test splits with the
same metric code as the network. The network's inputs serve as theirs: standardised
numbers with missing indicators, and category indices (native categories for gradient
boosting). Results go to `<run folder>/baselines.json`, beside `metrics.json`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from app import runs, storage
from app.config import Config
from app.data.prepare import Prepared, transform_batch
from app.data.transform import PreprocessState
from app.metrics import classification_metrics, json_safe, regression_metrics

MODELS = ("random_forest", "hist_gradient_boosting")


def run_baselines(cfg: Config, data: Prepared) -> dict[str, Any]:
    """Fit and score every baseline; write baselines.json; return its content."""
    import ray

    state = data.state
    train = collect(data.train, limit=cfg.report.baseline_max_rows, seed=cfg.data.split.seed)
    valid = collect(data.valid)
    test = collect(data.test_raw.map_batches(transform_batch, fn_kwargs={"state_json": state.to_json(), "split": None},
                                             batch_format="pandas", batch_size=None))
    refs = {split: ray.put(part) for split, part in (("train", train), ("valid", valid), ("test", test))}
    fit = ray.remote(fit_and_score).options(num_cpus=1)
    pending = [fit.remote(name, state.to_json(), **refs, seed=cfg.train.seed) for name in MODELS]
    results = dict(zip(MODELS, ray.get(pending)))
    storage.write_json(storage.join(runs.run_dir(cfg), runs.BASELINES), json_safe(results))
    return results


def collect(ds, limit: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A model-ready Dataset as arrays on the driver; at most `limit` rows, a seeded sample."""
    parts: dict[str, list[np.ndarray]] = {"x_num": [], "x_cat": [], "y": []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k in parts:
            parts[k].append(batch[k])
    arrays = {k: np.concatenate(v) for k, v in parts.items() if v}
    if not arrays:
        return {"x_num": np.zeros((0, 0), np.float32), "x_cat": np.zeros((0, 0), np.int64), "y": np.zeros(0)}
    n = len(arrays["y"])
    if limit is not None and n > limit:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
        arrays = {k: v[keep] for k, v in arrays.items()}
    return arrays


def features(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.hstack([arrays["x_num"].astype(np.float32), arrays["x_cat"].astype(np.float32)])


def make_model(name: str, task: str, state: PreprocessState, seed: int):
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    if name == "random_forest":
        cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
        return cls(n_estimators=100, random_state=seed, n_jobs=1)
    # Category indices as native categories where they fit HistGradientBoosting's 255 bins.
    categorical = [False] * state.numeric_width + [c.cardinality <= 255 for c in state.categorical]
    cls = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    return cls(random_state=seed, categorical_features=categorical if any(categorical) else None)


def fit_and_score(name: str, state_json: str, *, train: dict, valid: dict, test: dict, seed: int) -> dict[str, Any]:
    """One baseline: fit on the training split, score validation and test (a Ray task)."""
    state = PreprocessState.from_json(state_json)
    model = make_model(name, state.task, state, seed)
    started = time.perf_counter()
    model.fit(features(train), train["y"])
    fit_time = time.perf_counter() - started
    return {"valid": score(model, valid, state), "test": score(model, test, state),
            "fit_time_s": fit_time, "train_rows": len(train["y"])}


def score(model, arrays: dict[str, np.ndarray], state: PreprocessState) -> dict[str, float]:
    if len(arrays["y"]) == 0:
        return {}
    x = features(arrays)
    if state.task == "classification":
        proba = np.zeros((len(x), len(state.classes)))
        proba[:, model.classes_.astype(int)] = model.predict_proba(x)  # a class absent in training: p = 0
        metrics = classification_metrics(proba, arrays["y"].astype(int), len(state.classes))
    else:
        metrics = regression_metrics(model.predict(x).astype(np.float64), arrays["y"].astype(np.float64), state)
    metrics.pop("loss")
    return metrics


def comparison_table(model_metrics: dict[str, float] | None, baselines: dict[str, Any], kind: str = "model") -> str:
    """Test metrics of the network (when trained) beside the baselines, as plain text."""
    rows = ([(f"{kind} (this run)", model_metrics)] if model_metrics else []) + \
        [(name, result["test"]) for name, result in baselines.items()]
    names = [k for k in (model_metrics or next(iter(baselines.values()))["test"]) if k != "loss"]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'test split':<{width}}  " + " ".join(f"{n:>9}" for n in names)]
    for label, m in rows:
        lines.append(f"{label:<{width}}  " + " ".join(_cell(m.get(n)) for n in names))
    return "\n".join(lines)


def _cell(v: float | None) -> str:
    return f"{'n/a':>9}" if v is None or v != v else f"{v:>9.4f}"
