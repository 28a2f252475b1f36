"""Preprocessing fitted on the training split only: impute, scale, encode.

Fitting is a map-reduce: `partial_stats` summarises each batch of training rows (on the
cluster, via Ray Data), `merge_stats` combines the summaries on the driver and
`fit_preprocessor` turns them into a `PreprocessState`, which is plain JSON and travels
inside every checkpoint. `transform` (in app/data/transform.py, which `export` ships
as it is) is a pure function from a pandas batch to model-ready arrays; training,
evaluation, batch prediction and serving all call it.

Rules (also in the README):
- numeric columns: mapped onto a standard normal through their training quantiles
  (`preprocess.numeric_scaling: quantile`, the default) or standardised with the training
  mean and standard deviation (`standard`); missing values become the centre (0), plus a
  0/1 indicator column when the column had gaps in training (`preprocess.missing_indicators`).
  Quantiles, and the bins of the piecewise-linear embeddings, are fitted on a seeded
  sample of at most `preprocess.sample_rows` training rows: the rows with the smallest
  hash of their values (and of their rank among a repeated row's copies in a batch).
- infinite values in a numeric column are missing values (with a warning); an infinite
  regression label, and values whose squares overflow, are refused, naming the column.
- categorical columns (text, boolean, or listed in `data.categorical`): each category
  seen in training (at least `preprocess.min_category_count` times) gets an index, up to
  the `data.max_categories` most frequent (with a warning when more are cut); missing is
  a category of its own; anything else goes to the unknown bucket 0.
- a text column whose values are almost all numbers (at least 90% of the non-missing
  ones) is refused, naming the column and a stray value: fix the data or list the
  column in `data.categorical`. All numbers (numbers stored as text) is refused too.
- a column with no values at all in the training split is dropped with a warning.
- rows whose label is missing are not used for training or scoring.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from app.config import DataConfig, PreprocessConfig
from app.data.sources import Inputs
from app.data.split import SPLIT_COLUMN, row_uniforms
from app.data.transform import (
    MISSING,
    CategoricalColumn,
    NumericColumn,
    PreprocessState,
    category_strings,
    numeric_inputs,
)
from app.errors import UserError

NUMERIC_LOOKING = 0.9  # share of numeric values above which a text column is suspicious
AUTO_CLASSES = 20  # integer labels with at most this many distinct values are classes
_LABEL_VALUES_CAP = 1000  # distinct label values tracked per batch before giving up
DEFAULT_MAX_CATEGORIES = DataConfig.model_fields["max_categories"].default
_TRACKED_PER_CAP = 4  # categories counted per column and batch: this many times data.max_categories
MAX_QUANTILES = 1000  # quantile levels per numeric column (scikit-learn's default)
_SAMPLE_SEED = 0x5A4D91E  # the sample's row hash, independent of the split's
_GOLDEN_RATIO = (5**0.5 - 1) / 2  # spreads the copies of a repeated row evenly over [0, 1)


# ---------------------------------------------------------------- column kinds


def column_kinds(schema: pa.Schema, data: DataConfig) -> dict[str, str]:
    """{feature column: "numeric" | "categorical"} from the Arrow schema and the config."""
    label, features, categorical, drop = data.label, data.features, data.categorical, data.drop
    key = f"data.train ({data.train})"
    names = schema.names
    if SPLIT_COLUMN in names:  # add_split_column would overwrite it, and it would leak the split
        raise UserError(f"{key}: column {SPLIT_COLUMN!r} has a name the data step reserves for its own use; "
                        f"rename it")
    if label not in names:
        raise UserError(f"data.label: column {label!r} is not in {key} (columns: {', '.join(names)})")
    for config_key, listed in (("data.features", features or []), ("data.categorical", categorical),
                               ("data.drop", drop)):
        absent = [c for c in listed if c not in names]
        if absent:
            raise UserError(f"{config_key}: column(s) {', '.join(absent)} not in {key}")
    if features is not None and label in features:
        raise UserError(f"data.features: the label {label!r} cannot also be a feature")
    chosen = features if features is not None else [c for c in names if c != label and c not in drop]
    if not chosen:
        raise UserError(f"data.features: no feature columns left in {key}")
    kinds = {}
    for name in chosen:
        dtype = schema.field(name).type
        if name in categorical or _is_text(dtype) or pa.types.is_boolean(dtype):
            kinds[name] = "categorical"
        elif pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
            kinds[name] = "numeric"
        elif pa.types.is_null(dtype):
            kinds[name] = "numeric"  # an all-empty CSV column; dropped after the stats pass
        else:
            raise UserError(
                f"{key}: column {name!r} has type {dtype}, which is not supported; "
                f"list it in data.drop or convert it to a number or text"
            )
    return kinds


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype)


# ---------------------------------------------------------------- fitting: stats pass


def partial_stats(df: pd.DataFrame, kinds: dict[str, str], label: str,
                  all_rows: pd.DataFrame | None = None, max_categories: int = DEFAULT_MAX_CATEGORIES) -> dict[str, Any]:
    """Summary of one batch of training rows; JSON-able so it crosses processes cheaply.

    `all_rows` (training and held-out rows) is searched for stray text in numeric-looking
    columns, and for infinite labels: one bad value in the test split still means the
    column was misread. A categorical column reports its `_TRACKED_PER_CAP * max_categories`
    most frequent categories at most, so an id column costs no more than that.
    """
    all_rows = df if all_rows is None else all_rows
    labelled = df[label].notna().to_numpy()
    missing_labels = int((~labelled).sum())
    df = df[labelled]
    out: dict[str, Any] = {"rows": len(df), "numeric": {}, "categorical": {}}
    for name, kind in kinds.items():
        col = df[name]
        if kind == "numeric":
            v = pd.to_numeric(col, errors="coerce").to_numpy(np.float64, na_value=np.nan)
            entry = {"infinite": int(np.isinf(v).sum()), **_moments(v[np.isfinite(v)])}
            out["numeric"][name] = entry
        else:
            text = category_strings(col)
            counts = text.fillna(MISSING).value_counts()
            entry = {"present": int(text.notna().sum()), "distinct": len(counts) - (MISSING in counts.index)}
            top, truncated = _top_counts(counts, _TRACKED_PER_CAP * max_categories)
            entry.update(counts={str(k): int(c) for k, c in top.items()}, truncated=truncated)
            # Arrow text arrives as pandas "str", or as object when it has gaps (booleans
            # with gaps too: pd.to_numeric would take True for 1).
            if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)) \
                    and pd.api.types.infer_dtype(all_rows[name], skipna=True) != "boolean":
                present = all_rows[name].dropna().to_numpy(object)
                # via numpy: on Arrow-backed text, to_numeric marks failures NaN but not NA
                failed = np.isnan(pd.to_numeric(present, errors="coerce").astype(np.float64))
                stray = present[failed]
                entry["numeric_like"] = int((~failed).sum())
                entry["text_present"] = len(present)
                entry["stray"] = str(stray[0]) if len(stray) else None
            out["categorical"][name] = entry
    y = df[label]
    values = y.value_counts()
    out["label"] = {
        "missing": missing_labels,
        "values": [[_json_scalar(k), int(c)] for k, c in values.iloc[:_LABEL_VALUES_CAP].items()],
        "overflow": len(values) > _LABEL_VALUES_CAP,
    }
    if pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y):
        v = y.to_numpy(np.float64)
        every = all_rows[label]
        if pd.api.types.is_numeric_dtype(every) and not pd.api.types.is_bool_dtype(every):
            out["label"]["infinite"] = int(np.isinf(every.to_numpy(np.float64, na_value=np.nan)).sum())
        out["label"].update(_moments(v[np.isfinite(v)]))
    return out


def _moments(v: np.ndarray) -> dict[str, Any]:
    """Count, mean and sum of squared deviations of finite values. Values too large to square
    overflow to inf, which fit_preprocessor refuses, naming the column."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(v.mean()) if len(v) else 0.0
        return {"n": len(v), "mean": mean, "m2": float(((v - mean) ** 2).sum())}


def _top_counts(counts: pd.Series, keep: int) -> tuple[pd.Series, bool]:
    """(the `keep` most frequent categories, ties by name, plus missing; whether any were
    left out), from counts indexed by category."""
    missing = counts.index == MISSING
    if len(counts) - missing.sum() <= keep:
        return counts, False
    others = counts[~missing]
    top = others.sort_index(kind="stable").sort_values(ascending=False, kind="stable").iloc[:keep]
    return pd.concat([top, counts[missing]]), True


def sample_candidates(df: pd.DataFrame, kinds: dict[str, str], label: str, size: int) -> np.ndarray:
    """[hash, numeric feature values...] of the `size` labelled rows with the smallest hash
    of their values: the global sample is then the `size` smallest over all batches."""
    numeric = [n for n, k in kinds.items() if k == "numeric"]
    df = df[df[label].notna()]
    u = row_uniforms(df[[*kinds, label]], _SAMPLE_SEED)
    # Copies of a row share its hash, so all of them would be in the sample or none. Moving
    # each copy along by its rank among the batch's copies keeps a repeated row in the
    # sample about as often as in the data (a spike of zeros stays a spike).
    copy = pd.Series(u).groupby(u).cumcount().to_numpy()
    u = (u + copy * _GOLDEN_RATIO) % 1.0
    keep = np.argsort(u, kind="stable")[:size]
    values = [pd.to_numeric(df[n].iloc[keep], errors="coerce").to_numpy(np.float64, na_value=np.nan)
              for n in numeric]
    return np.column_stack([u[keep], *values]) if len(keep) else np.zeros((0, 1 + len(numeric)))


class SampleMerger:
    """Keeps the `size` rows with the smallest hash among the candidates it is given."""

    def __init__(self, size: int):
        self.size, self.rows = size, None

    def add(self, candidates: np.ndarray) -> None:
        self.rows = candidates if self.rows is None else np.concatenate([self.rows, candidates])
        if len(self.rows) > 2 * self.size:
            self.rows = self._smallest()

    def _smallest(self) -> np.ndarray:
        # Sort by hash, then by the values, so ties fall the same way whatever the order
        # the batches came in.
        order = np.lexsort(tuple(np.nan_to_num(self.rows[:, c], nan=np.inf) for c in
                                 range(self.rows.shape[1] - 1, -1, -1)))
        return self.rows[order[:self.size]]

    def result(self, numeric: list[str]) -> pd.DataFrame:
        rows = self._smallest() if self.rows is not None else np.zeros((0, 1 + len(numeric)))
        return pd.DataFrame(rows[:, 1:], columns=numeric)


def _json_scalar(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return int(v) if float(v).is_integer() else float(v)
    return str(v)


class StatsMerger:
    """Combines per-batch summaries as they stream in (Chan's parallel mean/variance for
    numbers). Each categorical column keeps at most about 2 x `_TRACKED_PER_CAP` x
    `max_categories` categories: beyond that the rarest are forgotten, which makes the
    counts, and so the choice of the most frequent categories, approximate."""

    def __init__(self, max_categories: int = DEFAULT_MAX_CATEGORIES):
        self.keep = _TRACKED_PER_CAP * max_categories
        self.total: dict[str, Any] = {"rows": 0, "numeric": {}, "categorical": {},
                                      "label": {"missing": 0, "values": {}, "overflow": False, "infinite": 0}}

    def add(self, p: dict[str, Any]) -> None:
        total = self.total
        total["rows"] += p["rows"]
        for name, s in p["numeric"].items():
            t = total["numeric"].setdefault(name, {"n": 0, "mean": 0.0, "m2": 0.0, "infinite": 0})
            _merge_moments(t, s)
            t["infinite"] += s["infinite"]
        for name, s in p["categorical"].items():
            t = total["categorical"].setdefault(name, {"counts": {}, "present": 0, "distinct": 0, "truncated": False,
                                                       "numeric_like": 0, "text_present": 0, "stray": None})
            for k, c in s["counts"].items():
                t["counts"][k] = t["counts"].get(k, 0) + c
            t["present"] += s["present"]
            t["truncated"] = t["truncated"] or s["truncated"]
            t["distinct"] = max(t["distinct"], s["distinct"], len(t["counts"]) - (MISSING in t["counts"]))
            if len(t["counts"]) > 2 * self.keep:
                t["counts"] = _top_counts(pd.Series(t["counts"], dtype=np.int64), self.keep)[0].to_dict()
                t["truncated"] = True
            if "numeric_like" in s:  # text columns only
                t["numeric_like"] += s["numeric_like"]
                t["text_present"] += s["text_present"]
                t["stray"] = t["stray"] or s["stray"]
        lab, pl = total["label"], p["label"]
        lab["missing"] += pl["missing"]
        lab["infinite"] += pl.get("infinite", 0)
        lab["overflow"] = lab["overflow"] or pl["overflow"]
        for value, count in pl["values"]:
            k = json.dumps(value)
            lab["values"][k] = lab["values"].get(k, 0) + count
        if len(lab["values"]) > _LABEL_VALUES_CAP:
            lab["overflow"] = True
        if "n" in pl:
            _merge_moments(lab.setdefault("moments", {"n": 0, "mean": 0.0, "m2": 0.0}), pl)

    def result(self) -> dict[str, Any]:
        for t in self.total["categorical"].values():
            if not t["truncated"]:  # every category was counted: the exact number
                t["distinct"] = len(t["counts"]) - (MISSING in t["counts"])
        return self.total


def merge_stats(parts: list[dict[str, Any]], max_categories: int = DEFAULT_MAX_CATEGORIES) -> dict[str, Any]:
    """Combine per-batch summaries (see StatsMerger)."""
    merger = StatsMerger(max_categories)
    for p in parts:
        merger.add(p)
    return merger.result()


def _merge_moments(t: dict[str, float], s: dict[str, float]) -> None:
    n = t["n"] + s["n"]
    if n == 0:
        return
    delta = s["mean"] - t["mean"]
    t["m2"] = t["m2"] + s["m2"] + delta * delta * t["n"] * s["n"] / n
    t["mean"] = t["mean"] + delta * s["n"] / n
    t["n"] = n


def detect_task(label_stats: dict[str, Any], label_type: str) -> str:
    """auto rule: text/boolean labels, or integers with <= 20 distinct values, are classes.

    `label_type` is the label's Arrow type as read: pandas turns integers with gaps
    into floats, so the values alone cannot tell.
    """
    if label_type in ("string", "large_string", "bool") or label_type.startswith("dictionary"):
        return "classification"
    if label_type.startswith(("int", "uint")) and not label_stats["overflow"] \
            and len(label_stats["values"]) <= AUTO_CLASSES:
        return "classification"
    return "regression"


def fit_preprocessor(stats: dict[str, Any], *, data: DataConfig, preprocess: PreprocessConfig,
                     inputs: Inputs) -> tuple[PreprocessState, list[str]]:
    """(fitted state, warnings) from merged training-split stats (before the numeric
    scaling, which `fit_numeric_scaling` fits on the sample)."""
    label, task, kinds = data.label, data.task, inputs.kinds
    key = f"data.train ({data.train})"
    rows = stats["rows"]
    if rows == 0:
        raise UserError(f"{key}: no rows with a label to train on")
    warnings = []
    lab = stats["label"]
    if lab["missing"]:
        warnings.append(f"{lab['missing']} training row(s) have no {label!r} and are not used")
    if task == "auto":
        task = detect_task(lab, inputs.label_type)

    numeric, categorical, dropped = [], [], []
    for name, kind in kinds.items():
        if kind == "numeric":
            s = stats["numeric"][name]
            if s["infinite"]:
                warnings.append(f"column {name!r} has {s['infinite']} infinite value(s) in the training split; "
                                f"they are treated as missing")
            if s["n"] == 0:
                dropped.append(name)
                continue
            std = math.sqrt(s["m2"] / s["n"]) if s["n"] else 0.0
            if not (math.isfinite(s["mean"]) and math.isfinite(std)):
                raise UserError(f"{key}: column {name!r} has values too large to scale (their squares overflow); "
                                f"fix the data, or list the column in data.drop")
            numeric.append(NumericColumn(name, s["mean"], std if std > 1e-12 else 1.0,
                                         preprocess.missing_indicators and s["n"] < rows))
        else:
            s = stats["categorical"][name]
            if s["present"] == 0:
                dropped.append(name)
                continue
            suspicious = s["stray"] is not None and s["numeric_like"] >= NUMERIC_LOOKING * s["text_present"]
            if suspicious and name not in data.categorical:
                raise UserError(
                    f"{key}: column {name!r} looks numeric but holds non-numeric values such as "
                    f"{s['stray']!r}; fix the data, or list the column in data.categorical"
                )
            if 0 < s["text_present"] == s["numeric_like"] and name not in data.categorical:
                # CSV reads such a column as numbers; Parquet keeps the writer's text type
                raise UserError(f"{key}: column {name!r} holds only numbers but is stored as text; store it as "
                                f"numbers, or list it in data.categorical to use it as categories")
            cats, warning = _capped_categories(name, s, min_count=preprocess.min_category_count,
                                               cap=data.max_categories)
            warnings += [warning] if warning else []
            categorical.append(CategoricalColumn(name, cats))
    if dropped:
        warnings.append(f"column(s) {', '.join(dropped)} have no values in the training split and are dropped")
    if not numeric and not categorical:
        raise UserError(f"{key}: no usable feature columns (all are empty)")

    state = PreprocessState(label=label, task=task, numeric=numeric, categorical=categorical,
                            dropped=dropped, input_types=inputs.input_types, train_rows=rows)
    if task == "classification":
        values = sorted((json.loads(k) for k in lab["values"]), key=lambda v: (str(type(v)), v))
        if lab["overflow"] or len(values) > _LABEL_VALUES_CAP:
            raise UserError(f"data.label: {label!r} has too many distinct values for classification")
        if len(values) < 2:
            only = values[0] if values else None
            raise UserError(f"data.label: {label!r} has a single class ({only!r}) in the training split; "
                            f"classification needs at least two")
        state.classes = values
    else:
        m = lab.get("moments")
        if lab["infinite"]:
            raise UserError(f"data.label: {label!r} has {lab['infinite']} infinite value(s) in {key}; a regression "
                            f"target must be finite: fix or remove those rows")
        if not m or m["n"] == 0:
            raise UserError(f"data.label: {label!r} is not numeric, so it cannot be a regression target")
        std = math.sqrt(m["m2"] / m["n"])
        if not (math.isfinite(m["mean"]) and math.isfinite(std)):
            raise UserError(f"data.label: {label!r} has values too large to scale in {key} (their squares "
                            f"overflow); fix the data")
        state.target_mean, state.target_std = m["mean"], std if std > 1e-12 else 1.0
    return state, warnings


def _capped_categories(name: str, s: dict[str, Any], *, min_count: int, cap: int) -> tuple[list[str], str | None]:
    """(the categories a column keeps, sorted; a warning when `data.max_categories` cut some).

    Missing is kept whenever it was seen and does not count against the cap."""
    seen = {k: c for k, c in s["counts"].items() if c >= min_count and k != MISSING}
    top = sorted(seen, key=lambda k: (-seen[k], k))[:cap]
    cats = sorted(top + ([MISSING] if s["counts"].get(MISSING, 0) >= min_count else []))
    if len(seen) <= cap:
        return cats, None
    if s["truncated"]:  # some batches or merges counted only their most frequent categories
        total = max(s["distinct"], len(seen))
        return cats, (f"column {name!r} has at least {total} categories, more than data.max_categories ({cap}): "
                      f"the {cap} most frequent (counted approximately) are kept and the other {total - cap} or "
                      f"more go to the unknown bucket (an identifier belongs in data.drop)")
    return cats, (f"column {name!r} has {len(seen)} categories, more than data.max_categories ({cap}): the {cap} "
                  f"most frequent are kept and the other {len(seen) - cap} go to the unknown bucket (an identifier "
                  f"belongs in data.drop)")


def fit_numeric_scaling(state: PreprocessState, sample: pd.DataFrame, scaling: str, n_bins: int) -> None:
    """Quantiles (for `quantile` scaling) and embedding bins, fitted on the training sample.

    Quantile levels follow the TabM paper's rule, n / 30 clipped to [10, 1000]; bins are
    the `n_bins` quantile edges of each prepared numeric input (rtdl_num_embeddings)."""
    if not state.numeric:
        return
    if scaling == "quantile":
        from scipy.special import ndtri

        n_levels = int(np.clip(len(sample) // 30, 10, MAX_QUANTILES))
        levels = np.linspace(0.0, 1.0, n_levels)
        # As in scikit-learn's QuantileTransformer, a value's level is linear between two
        # fitted quantiles and its score is the normal quantile of that level. Each gap is
        # cut into `steps` pieces, so that transform's linear interpolation of scores
        # follows that curve even with few levels. Levels are clipped to [1e-7, 1 - 1e-7]:
        # the ends map to +-5.2, not to infinity.
        steps = max(1, math.ceil((MAX_QUANTILES - 1) / (n_levels - 1)))
        fine = np.linspace(0.0, 1.0, (n_levels - 1) * steps + 1)
        state.quantile_normal = ndtri(np.clip(fine, 1e-7, 1 - 1e-7)).tolist()
        for col in state.numeric:
            v = sample[col.name].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            if len(v):  # else no value of this column is in the sample: it keeps standard scaling
                col.quantiles = np.interp(fine, levels, np.quantile(v, levels)).tolist()
    state.bins = embedding_bins(numeric_inputs(sample, state), n_bins)


def embedding_bins(x: np.ndarray, n_bins: int) -> list[list[float]]:
    """Bin edges per column of `x` for piecewise-linear embeddings: quantile edges from
    rtdl_num_embeddings.compute_bins; a column with a single value gets one unit bin."""
    import warnings

    import torch
    from rtdl_num_embeddings import compute_bins

    edges = []
    for column in x.T.astype(np.float32):
        column = column[np.isfinite(column)]
        distinct = np.unique(column)
        if len(distinct) < 2 or len(column) < 3:
            centre = float(distinct[0]) if len(distinct) else 0.0
            edges.append([centre - 0.5, centre + 0.5])
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*just two bin edges")  # a 0/1 column: one bin is right
            bins = compute_bins(torch.from_numpy(column[:, None].copy()), n_bins=min(n_bins, len(column) - 1))
        edges.append(bins[0].tolist())
    return edges
