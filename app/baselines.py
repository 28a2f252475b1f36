"""scikit-learn baselines on exactly the run's split and preprocessing.

    python -m app baseline --config configs/quickstart.yaml

A RandomForest (100 trees) and a HistGradientBoosting model are fitted in parallel as Ray
tasks on a seeded sample of the training split (at most `report.baseline_max_rows` rows,
drawn on the cluster), and scored on the full validation and test splits by Ray Data
tasks, with the same metric sums as the network: no split passes through the driver. The network's inputs serve as theirs: standardised
numbers with missing indicators, and category indices (native categories for gradient
boosting). Results go to `<run folder>/baselines.json`, beside `metrics.json`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from app import progress, runs, storage
from app.config import Config
from app.data.prepare import Prepared, transform_batch
from app.data.transform import PreprocessState
from app.metrics import MetricSums, block_sums, json_safe

MODELS = ("random_forest", "hist_gradient_boosting")


def run_baselines(cfg: Config, data: Prepared) -> dict[str, Any]:
    """Fit and score every baseline; write baselines.json; return its content."""
    import ray

    state, state_json, limit = data.state, data.state.to_json(), cfg.report.baseline_max_rows
    train = data.train
    if data.counts["train"] > limit:  # a Bernoulli sample per block, seeded by the block's index
        train = train.random_sample(limit / data.counts["train"], seed=cfg.data.split.seed)
    blocks = train.materialize().to_numpy_refs()  # the sample stays in the object store
    fit = ray.remote(fit_baseline).options(num_cpus=1, num_returns=2)
    fitted = {name: fit.remote(name, state_json, blocks, limit=limit, seed=cfg.train.seed) for name in MODELS}
    models = [model for model, _ in fitted.values()]
    test = data.test_raw.map_batches(transform_batch, fn_kwargs={"state_json": state_json, "split": None},
                                     batch_format="pandas", batch_size=None)
    # Where a terminal shows it, a bar of the fits; the scoring that follows (each block waits
    # for the fits anyway) is a Ray Data job, which shows its own bars there.
    with progress.bar("baselines: fitting", total=len(MODELS), unit="model") as bar:
        progress.wait([info for _, info in fitted.values()], bar)
    scores = {split: score_dataset(ds, models, state) for split, ds in (("valid", data.valid), ("test", test))}
    results = {}
    for i, (name, (_, info)) in enumerate(fitted.items()):
        results[name] = {"valid": scores["valid"][i], "test": scores["test"][i], **ray.get(info)}
    storage.write_json(storage.join(runs.run_dir(cfg), runs.BASELINES), json_safe(results))
    return results


def fit_baseline(name: str, state_json: str, blocks: list, *, limit: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """One baseline fitted on the sampled blocks (a Ray task): the model, and its fit time
    and training rows."""
    import ray

    parts = [b for b in ray.get(blocks) if len(b["y"])]
    x = features({k: np.concatenate([b[k] for b in parts]) for k in ("x_num", "x_cat")})[:limit] if parts else None
    y = np.concatenate([b["y"] for b in parts])[:limit] if parts else np.zeros(0)
    state = PreprocessState.from_json(state_json)
    model = make_model(name, state.task, state, seed)
    started = time.perf_counter()
    model.fit(x, y)
    return model, {"fit_time_s": time.perf_counter() - started, "train_rows": len(y)}


_FETCHED: dict[str, Any] = {}  # per worker process: the fitted models of the baselines being scored


def _block_sums(batch: dict[str, np.ndarray], state: PreprocessState, *model_refs) -> list[MetricSums]:
    """Each model's metric sums on one model-ready block (`metrics.block_sums`). A worker
    process fetches the fitted models from the object store once."""
    import ray

    keys = [ref.hex() for ref in model_refs]
    if [k for k in keys if k not in _FETCHED]:
        _FETCHED.clear()
        _FETCHED.update(zip(keys, ray.get(list(model_refs))))
    return [sums(_FETCHED[k], batch, state) for k in keys]


def score_dataset(ds, models: list, state: PreprocessState) -> list[dict[str, float]]:
    """Each model's metrics on a model-ready Dataset, scored block by block on the cluster."""
    totals = [MetricSums.empty(state) for _ in models]
    for parts in block_sums(ds, _block_sums, state, *models, batch_format="numpy"):
        totals = [t.merge(part) for t, part in zip(totals, parts)]
    out = []
    for total in totals:
        metrics = total.metrics(state)
        metrics.pop("loss", None)
        out.append(metrics)
    return out


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


def sums(model, arrays: dict[str, np.ndarray], state: PreprocessState) -> MetricSums:
    if len(arrays["y"]) == 0:
        return MetricSums.empty(state)
    x = features(arrays)
    if state.task == "classification":
        proba = np.zeros((len(x), len(state.classes)))
        proba[:, model.classes_.astype(int)] = model.predict_proba(x)  # a class absent in training: p = 0
        with np.errstate(divide="ignore"):
            outputs = np.log(proba)  # logits whose softmax is `proba`: scored as the network's are
    else:
        outputs = model.predict(x).astype(np.float64)
    return MetricSums.of(outputs, arrays["y"], state)


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
