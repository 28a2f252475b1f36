"""Permutation feature importance: how much the task's loss grows when one feature's values
are shuffled among the rows, breaking its link to the label.

    raytab evaluate --checkpoint CKPT --data holdout.csv --importance

The loss is the one `evaluate` reports as the task's main metric: `log_loss` for
classification, `rmse` (in the label's units) for regression. A feature's importance is the
mean increase over `repeats` shuffles, with their standard deviation (numpy's, ddof 0, as
scikit-learn reports it); near zero or below: the model does not rely on it.

Each feature is one unit as the user named it: permuting a raw column and then transforming
the rows equals permuting every model input that `transform` derives from that column (its
scaled value and its missing indicator, or its category index) by the same row order, since
each of them depends on that column's value in the same row only. So the rows are
transformed once and each shuffle moves the column's group of model inputs together.

The rows are a seeded sample of at most `max_rows` labelled rows: those whose row hash
(app/data/split.py `row_uniforms`) is smallest, so the sample depends only on the rows'
values and the seed, not on files, blocks or the cluster; a Ray Dataset is sampled in two
passes of Ray Data tasks (each block's smallest hashes, then the rows under the cut), so
`max_rows` rows reach the driver (a few more only where exact duplicates share the cut). There,
the shuffles run as one Ray task per feature, each returning `repeats` numbers. The random
order of each shuffle depends on the seed and the feature's position only, so the same
sample gives the same numbers in one process (`Model.feature_importance`) or on a cluster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from app import progress
from app.data.split import row_uniforms
from app.data.transform import PreprocessState, encode_label, scorable, transform
from app.errors import UserError
from app.metrics import block_sums, softmax
from app.predictor import SCORE_BATCH, Predictor, cached_predictor

REPEATS = 5
MAX_ROWS = 10_000
METRIC = {"classification": "log_loss", "regression": "rmse"}
_EPS = float(np.finfo(np.float64).eps)  # log loss clipped as app/metrics.py (scikit-learn) clips it


def check_options(**counts: Any) -> None:
    """Each of `counts` (name as the caller's flag or parameter -> value) a whole number >= 1."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name}: expected a whole number >= 1, got {value!r}")


# ---------------------------------------------------------------- in one process


def permutation_importance(predictor: Predictor, df: pd.DataFrame, *, repeats: int = REPEATS,
                           seed: int = 0) -> list[dict[str, Any]]:
    """[{feature, importance, stddev}, ...] of every feature on the labelled rows of `df`,
    most important first, computed here (all of `df`: sample it first with `sample_rows`)."""
    arrays = scored_arrays(predictor, df)
    features = predictor.state.features
    with progress.bar("feature importance", total=len(features), unit="feature") as bar:
        losses = [progress.tick(feature_losses(predictor, arrays, i, repeats, seed), bar) for i in range(len(features))]
    return ranked(features, task_loss(predictor, arrays), losses)


def scored_arrays(predictor: Predictor, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Model inputs and encoded labels of the rows of `df` whose label can be scored."""
    state = predictor.state
    arrays = transform(df[df[state.label].notna()], state)
    keep = scorable(arrays["y"], state)
    if not keep.any():
        raise UserError(f"feature importance: no row has a usable label {state.label!r} to score")
    return {k: v[keep] for k, v in arrays.items()}


def task_loss(predictor: Predictor, arrays: dict[str, np.ndarray], x_num: np.ndarray | None = None,
              x_cat: np.ndarray | None = None) -> float:
    """The task's main metric (`METRIC`) of the model on `arrays`, or on these inputs in place of theirs."""
    state = predictor.state
    out = predictor.forward(arrays["x_num"] if x_num is None else x_num, arrays["x_cat"] if x_cat is None else x_cat,
                            SCORE_BATCH).astype(np.float64)
    y = arrays["y"]
    if state.task == "classification":
        p_true = softmax(out)[np.arange(len(y)), y]
        return float(-np.log(np.clip(p_true, _EPS, 1 - _EPS)).mean())
    return float(np.sqrt(np.mean(((out - y) * state.target_std) ** 2)))


def input_columns(state: PreprocessState, index: int) -> tuple[list[int], list[int]]:
    """The x_num and x_cat columns that `transform` derives from feature `index` (of `state.features`)."""
    if index >= len(state.numeric):
        return [], [index - len(state.numeric)]
    indicators = [i for i, c in enumerate(state.numeric) if c.indicator]
    extra = [len(state.numeric) + indicators.index(index)] if state.numeric[index].indicator else []
    return [index, *extra], []


def feature_losses(predictor: Predictor, arrays: dict[str, np.ndarray], index: int, repeats: int,
                   seed: int) -> np.ndarray:
    """The loss after each of `repeats` shuffles of feature `index`'s model inputs."""
    num, cat = input_columns(predictor.state, index)
    rng = np.random.default_rng([seed, index])
    losses = np.empty(repeats)
    for r in range(repeats):
        order = rng.permutation(len(arrays["y"]))
        x_num, x_cat = arrays["x_num"].copy(), arrays["x_cat"].copy()
        x_num[:, num], x_cat[:, cat] = arrays["x_num"][np.ix_(order, num)], arrays["x_cat"][np.ix_(order, cat)]
        losses[r] = task_loss(predictor, arrays, x_num, x_cat)
    return losses


def ranked(features: list[str], base: float, losses: list[np.ndarray]) -> list[dict[str, Any]]:
    rows = [{"feature": f, "importance": float(np.mean(l) - base), "stddev": float(np.std(l))}
            for f, l in zip(features, losses)]
    return sorted(rows, key=lambda r: -r["importance"])  # stable: ties keep the features' order


def sample_rows(df: pd.DataFrame, state: PreprocessState, max_rows: int, seed: int) -> pd.DataFrame:
    """The feature and label columns of at most `max_rows` rows of `df` with a usable label:
    those of smallest row hash, in that order (a pure function of the rows' values and `seed`)."""
    rows = labelled(df, state)
    order = np.argsort(row_uniforms(rows, seed), kind="stable")[:max_rows]
    return rows.iloc[order].reset_index(drop=True)


def labelled(df: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
    rows = df.loc[df[state.label].notna(), [*state.features, state.label]]
    return rows[scorable(encode_label(rows[state.label], state), state)]


# ---------------------------------------------------------------- on the cluster


def importance(checkpoint: str, predictor: Predictor, data: Any, *, repeats: int = REPEATS, seed: int = 0,
               max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """What `evaluate --importance` adds to its result: `feature_importance` and what it
    was computed on (`importance`: metric, rows, repeats, seed). `data`: a DataFrame (done
    here) or a Ray Dataset of raw labelled rows (sampled and shuffled on the cluster)."""
    if isinstance(data, pd.DataFrame):
        sample = sample_rows(data, predictor.state, max_rows, seed)
        ranking = permutation_importance(predictor, sample, repeats=repeats, seed=seed)
    else:
        sample = sample_dataset(data, predictor.state, max_rows, seed)
        ranking = cluster_importance(checkpoint, predictor, sample, repeats=repeats, seed=seed)
    return {"feature_importance": ranking,
            "importance": {"metric": METRIC[predictor.state.task], "rows": len(sample), "repeats": repeats,
                           "seed": seed}}


def sample_dataset(ds, state: PreprocessState, max_rows: int, seed: int) -> pd.DataFrame:
    """`sample_rows` of a Ray Dataset: the same rows, found by two passes of Ray Data tasks.

    The first brings each block's smallest row hashes, whose `max_rows`-th smallest overall
    is the cut; the second, the rows under it, and of the rows at it (exact duplicates of
    one another, as they hash the same: which copies come does not matter) only as many
    per block as the sample takes. So `max_rows` rows reach this process, plus, only where
    duplicates share the cut, a few more copies of that one row."""
    smallest = np.empty(0)
    for part in block_sums(ds, _smallest_hashes, state, max_rows, seed):
        smallest = np.sort(np.concatenate([smallest, part]))[:max_rows]
    if len(smallest) == 0:
        raise UserError(f"feature importance: no row has a usable label {state.label!r} to score")
    cut, ties = (float(smallest[-1]), int((smallest == smallest[-1]).sum())) if len(smallest) == max_rows \
        else (1.0, 0)  # (every hash is below 1)
    below = ds.map_batches(_rows_below, fn_args=(state, seed, cut, ties), batch_format="pandas", batch_size=None,
                           num_cpus=1)
    batches = [b for b in below.iter_batches(batch_size=None, batch_format="pandas") if len(b)]  # (an empty
    # block comes back with untyped columns, which would turn the others' numbers into objects)
    return sample_rows(pd.concat(batches, ignore_index=True), state, max_rows, seed)


def _smallest_hashes(block: pd.DataFrame, state: PreprocessState, max_rows: int, seed: int) -> np.ndarray:
    return np.sort(row_uniforms(labelled(block, state), seed))[:max_rows]


def _rows_below(block: pd.DataFrame, state: PreprocessState, seed: int, cut: float, ties: int) -> pd.DataFrame:
    """The labelled rows of `block` whose hash is below `cut`, and the first `ties` at it."""
    rows = labelled(block, state)
    u = row_uniforms(rows, seed)
    keep = u < cut
    keep[np.flatnonzero(u == cut)[:ties]] = True
    return rows[keep]


def cluster_importance(checkpoint: str, predictor: Predictor, sample: pd.DataFrame, *, repeats: int,
                       seed: int) -> list[dict[str, Any]]:
    """`permutation_importance` of `sample` with one 1-CPU Ray task per feature, each given
    the transformed rows through the object store and returning `repeats` losses."""
    import ray

    arrays = scored_arrays(predictor, sample)
    ref = ray.put(arrays)
    task = ray.remote(_feature_losses).options(num_cpus=1)
    pending = [task.remote(checkpoint, ref, i, repeats, seed) for i in range(len(predictor.state.features))]
    base = task_loss(predictor, arrays)
    with progress.bar("feature importance", total=len(pending), unit="feature") as bar:
        progress.wait(pending, bar)
    return ranked(predictor.state.features, base, ray.get(pending))


def _feature_losses(checkpoint: str, arrays: dict[str, np.ndarray], index: int, repeats: int,
                    seed: int) -> np.ndarray:
    return feature_losses(cached_predictor(checkpoint), arrays, index, repeats, seed)
