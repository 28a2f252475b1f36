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
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from app.config import DataConfig, PreprocessConfig
from app.data.sources import Inputs
from app.data.split import SPLIT_COLUMN, RowValues
from app.data.transform import MISSING, CategoricalColumn, NumericColumn, PreprocessState, numeric_inputs
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


def check_columns(names: Iterable[str], wanted: Iterable[str], where: str, *, what: str = "feature column(s)",
                  reads: Sequence[str] | None = None) -> None:
    """Refuse input without every `wanted` column (`names`: the columns it has) in one
    UserError, "<where>: missing <what> a, b": `where` names the flag or config key and the
    file; `reads`, what the model reads, is listed after."""
    have = set(names)
    absent = [c for c in wanted if c not in have]
    if absent:
        also = f" (the model reads: {', '.join(reads)})" if reads is not None else ""
        raise UserError(f"{where}: missing {what} {', '.join(absent)}{also}")


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype)


# ---------------------------------------------------------------- fitting: stats pass


def partial_stats(rows: RowValues | pd.DataFrame | pa.Table, kinds: dict[str, str], label: str,
                  train: np.ndarray | None = None, max_categories: int = DEFAULT_MAX_CATEGORIES) -> dict[str, Any]:
    """Summary of the training rows (`train`, a mask; default: every row) of one batch;
    JSON-able, and merged by `StatsMerger`.

    The batch's other rows (validation and test) are searched too, for stray text in
    numeric-looking columns and for infinite labels: one bad value in the test split
    still means the column was misread. A categorical column reports its
    `_TRACKED_PER_CAP * max_categories` most frequent categories at most, so an id column
    costs no more than that.
    """
    rows = rows if isinstance(rows, RowValues) else RowValues(rows)
    train = np.ones(len(rows), dtype=bool) if train is None else train
    labelled = train & ~rows.missing(label)
    out: dict[str, Any] = {"rows": int(labelled.sum()), "numeric": {}, "categorical": {}}
    for name, kind in kinds.items():
        if kind == "numeric":
            v = rows.numbers(name)[labelled]
            out["numeric"][name] = {"infinite": int(np.isinf(v).sum()), **_moments(v[np.isfinite(v)])}
        else:
            out["categorical"][name] = _category_stats(rows, name, labelled, _TRACKED_PER_CAP * max_categories)
    out["label"] = _label_stats(rows, label, labelled, missing=int(train.sum()) - out["rows"])
    return out


def _category_stats(rows: RowValues, name: str, labelled: np.ndarray, keep: int) -> dict[str, Any]:
    t = rows.texts(name)
    codes = t.codes[labelled]
    present = codes >= 0
    per_text = np.bincount(codes[present], minlength=len(t.texts))
    counts = pd.Series(per_text[per_text > 0], index=pd.Index(t.texts[per_text > 0], dtype=object), dtype=np.int64)
    if not counts.index.is_unique:  # distinct values with one text (a mixed column: 7 and "7")
        counts = counts.groupby(level=0, sort=False).sum()
    missing = len(codes) - int(present.sum())
    if missing:  # "missing" is a category of its own (and a literal MISSING value is in it)
        counts[MISSING] = counts.get(MISSING, 0) + missing
    top, truncated = _top_counts(counts, keep)
    entry = {"present": int(present.sum()), "distinct": len(counts) - (MISSING in counts.index),
             "counts": {str(k): int(c) for k, c in top.items()}, "truncated": truncated}
    if rows.is_text(name):  # every row of the batch: numbers stored as text, or one stray word among numbers
        failed, present = rows.not_numbers(name), int((t.codes >= 0).sum())
        first = np.flatnonzero(failed)[:1]
        entry.update(numeric_like=present - int(failed.sum()), text_present=present,
                     stray=str(rows.value(name, first[0])) if len(first) else None)
    return entry


def _label_stats(rows: RowValues, label: str, labelled: np.ndarray, missing: int) -> dict[str, Any]:
    values = rows.series(label)[labelled].value_counts()
    out = {"missing": missing, "values": [[_json_scalar(k), int(c)] for k, c in values.iloc[:_LABEL_VALUES_CAP].items()],
           "overflow": len(values) > _LABEL_VALUES_CAP}
    if rows.is_numeric(label):
        every = rows.numbers(label)  # every split: an infinite label anywhere is refused
        out["infinite"] = int(np.isinf(every).sum())
        v = every[labelled]
        out.update(_moments(v[np.isfinite(v)]))
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
    values = others.to_numpy()
    kth = np.partition(values, len(values) - keep)[len(values) - keep]  # the keep-th largest count
    above = others[values > kth]
    # Only the categories at that count are compared by name (Arrow: UTF-8 byte order is
    # code point order, as Python compares strings); an id column has ~all of them there.
    tied = others[values == kth]
    names = pa.array(tied.index.to_numpy(object), pa.string())
    first = pc.select_k_unstable(names, keep - len(above), sort_keys=[("dummy", "ascending")])
    return pd.concat([above, tied.iloc[first.to_numpy()], counts[missing]]), True


def sample_candidates(rows: RowValues | pd.DataFrame | pa.Table, kinds: dict[str, str], label: str, size: int,
                      train: np.ndarray | None = None) -> np.ndarray:
    """[hash, numeric feature values...] of the `size` labelled training rows (`train`: a
    mask, default every row) with the smallest hash of their values: the global sample is
    then the `size` smallest over all batches (in any order)."""
    rows = rows if isinstance(rows, RowValues) else RowValues(rows)
    numeric = [n for n, k in kinds.items() if k == "numeric"]
    chosen = ~rows.missing(label) if train is None else train & ~rows.missing(label)
    u = rows.uniforms(_SAMPLE_SEED, [*kinds, label])[chosen]
    # Copies of a row share its hash, so all of them would be in the sample or none. Moving
    # each copy along by its rank among the batch's copies keeps a repeated row in the
    # sample about as often as in the data (a spike of zeros stays a spike).
    if pd.Series(u).duplicated().any():
        copy = pd.Series(u).groupby(u).cumcount().to_numpy()
        u = (u + copy * _GOLDEN_RATIO) % 1.0
    keep = np.arange(len(u))
    if len(u) > size:
        keep = np.argpartition(u, size - 1)[:size]
        if np.count_nonzero(u == u[keep].max()) > 1:  # a tie at the cut: the earlier row wins
            keep = np.argsort(u, kind="stable")[:size]
    values = [rows.numbers(n)[chosen][keep] for n in numeric]
    return np.column_stack([u[keep], *values]) if len(keep) else np.zeros((0, 1 + len(numeric)))


class SampleMerger:
    """Keeps the `size` rows with the smallest hash among the candidates it is given (ties
    by their values, so the result does not depend on the order the batches came in)."""

    def __init__(self, size: int):
        self.size, self.rows = size, None

    def add(self, candidates: np.ndarray) -> None:
        if not len(candidates):
            return
        self.rows = candidates if self.rows is None else np.concatenate([self.rows, candidates])
        if len(self.rows) > 2 * self.size:
            self.rows = self._smallest_hashes()

    def _smallest_hashes(self) -> np.ndarray:
        """The rows with the `size` smallest hashes, and any tied with the last of them."""
        h = self.rows[:, 0]
        if len(h) <= self.size:
            return self.rows
        return self.rows[h <= np.partition(h, self.size - 1)[self.size - 1]]

    def candidates(self) -> np.ndarray:
        """The candidates kept: those with the `size` smallest hashes and any tied with the
        last of them (merged again with others, they give the same sample)."""
        return np.zeros((0, 1)) if self.rows is None else self._smallest_hashes()

    def result(self, numeric: list[str]) -> pd.DataFrame:
        if self.rows is None:
            return pd.DataFrame(np.zeros((0, len(numeric))), columns=numeric)
        rows = self._smallest_hashes()
        order = np.lexsort(tuple(np.nan_to_num(rows[:, c], nan=np.inf) for c in range(rows.shape[1] - 1, -1, -1)))
        return pd.DataFrame(rows[order[:self.size], 1:], columns=numeric)


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
            _merge_into(t, s)
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
        for value, count in ([] if lab["overflow"] else pl["values"]):  # past the cap, only the fact counts
            k = json.dumps(value)
            lab["values"][k] = lab["values"].get(k, 0) + count
        if len(lab["values"]) > _LABEL_VALUES_CAP:
            lab["overflow"], lab["values"] = True, {}
        if "n" in pl:
            _merge_into(lab.setdefault("moments", {"n": 0, "mean": 0.0, "m2": 0.0}), pl)

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


def merge_moments(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Chan et al.'s parallel update: (count, mean, sum of squared deviations) of two parts
    together, from each part's. Exact whatever the order of merging, up to rounding; also
    used by app/metrics.py for its regression sums."""
    n1, mean1, m2_1 = a
    n2, mean2, m2_2 = b
    n = n1 + n2
    if n == 0:
        return 0, 0.0, 0.0
    delta = mean2 - mean1
    return n, mean1 + delta * n2 / n, m2_1 + m2_2 + delta * delta * n1 * n2 / n


def _merge_into(t: dict[str, Any], s: dict[str, Any]) -> None:
    """`merge_moments` of two summaries' {"n", "mean", "m2"}, into `t`."""
    t["n"], t["mean"], t["m2"] = merge_moments((t["n"], t["mean"], t["m2"]), (s["n"], s["mean"], s["m2"]))


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

    present = {name: stats["numeric"][name]["n"] if kind == "numeric" else stats["categorical"][name]["present"]
               for name, kind in kinds.items()}  # for the missing shares in the report's data summary
    state = PreprocessState(label=label, task=task, numeric=numeric, categorical=categorical,
                            dropped=dropped, input_types=inputs.input_types, train_rows=rows,
                            missing={name: round(1.0 - n / rows, 6) for name, n in present.items()})
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
    """Quantiles (for `quantile` scaling) and embedding bins, fitted on the training sample."""
    fit_quantiles(state, sample, scaling)
    fit_bins(state, sample, n_bins)


def fit_quantiles(state: PreprocessState, sample: pd.DataFrame, scaling: str) -> None:
    """Quantiles of each numeric column for `quantile` scaling: levels follow the TabM
    paper's rule, n / 30 clipped to [10, 1000]."""
    if state.numeric and scaling == "quantile":
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


def fit_bins(state: PreprocessState, sample: pd.DataFrame, n_bins: int) -> None:
    """The `n_bins` quantile edges of each prepared numeric input, for the model's
    piecewise-linear embeddings (the transform does not use them)."""
    if state.numeric:
        state.bins = embedding_bins(numeric_inputs(sample, state), n_bins)


def embedding_bins(x: np.ndarray, n_bins: int) -> list[list[float]]:
    """Bin edges per column of `x` for piecewise-linear embeddings: the distinct quantiles
    at n_bins + 1 evenly spaced levels, as rtdl_num_embeddings.compute_bins computes them
    (without importing it: its import of scikit-learn takes seconds of the data step); a
    column with a single value gets one unit bin. One torch thread: `prepare` runs this
    beside its tasks, which hold every CPU."""
    import torch

    edges, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for column in x.T.astype(np.float32):
            column = column[np.isfinite(column)]
            if len(column) < 3 or column.min() == column.max():
                centre = float(column.min()) if len(column) else 0.0
                edges.append([centre - 0.5, centre + 0.5])
                continue
            levels = torch.linspace(0.0, 1.0, min(n_bins, len(column) - 1) + 1)
            edges.append(torch.quantile(torch.from_numpy(column.copy()), levels).unique().tolist())
    finally:
        torch.set_num_threads(threads)
    return edges
