"""Raw rows -> model-ready arrays, from a fitted `PreprocessState` (JSON).

Self-contained on purpose: it needs only numpy and pandas, so `python -m app export`
copies this very file next to the exported model, and predictions made without Ray or
this package preprocess exactly as training did. Fitting lives in app/data/preprocess.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MISSING = "__missing__"  # the category that missing values fall into
# Standard scores are clipped to this: no training value gets near it (the largest possible
# score of n rows is sqrt(n - 1)), and a far larger value at prediction time, which float32
# would make infinite, stays finite.
STANDARD_LIMIT = 1e4
STATE_VERSION = 3
# version 1: standard scaling only, no embedding bins; before 3, categories were stored
# as their text (`true`, `007`), not in `category_strings`' canonical form
READABLE_VERSIONS = (1, 2, 3)
# What a CSV reader (pyarrow's) takes for missing: such a text in a numeric column is a
# missing value, not a word, whatever the input's format.
NULL_TEXTS = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                        "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"])
_TRUE_TEXTS, _FALSE_TEXTS = ("true", "True", "TRUE"), ("false", "False", "FALSE")  # as CSV writers spell them
_EXACT = 2.0 ** 53  # whole numbers below this are exact in float64


class BadValue(ValueError):
    """A value the model cannot read whatever the input's format: a word in a numeric column."""


def not_a_number(column: str, value: Any) -> str:
    """The one message for a non-numeric value in a numeric feature, for every input."""
    text = repr(value)
    return f"column {column!r} holds {text if len(text) <= 80 else text[:77] + '...'}, which is not a number"


@dataclass
class NumericColumn:
    name: str
    mean: float
    std: float
    indicator: bool  # emit a 0/1 "was missing" column
    # Quantile scaling: the column's training quantiles at evenly spaced levels from 0 to 1,
    # whose standard-normal scores are PreprocessState.quantile_normal; None: standard
    # scaling with mean and std.
    quantiles: list[float] | None = None


@dataclass
class CategoricalColumn:
    name: str
    categories: list[str]  # index i + 1; 0 is the unknown bucket

    @property
    def cardinality(self) -> int:
        return len(self.categories) + 1


@dataclass
class PreprocessState:
    """Everything needed to turn raw rows into model inputs; JSON round-trips exactly."""

    label: str
    task: str
    numeric: list[NumericColumn]
    categorical: list[CategoricalColumn]
    classes: list[Any] = field(default_factory=list)  # classification: original label values
    target_mean: float = 0.0  # regression: the label is standardised for training
    target_std: float = 1.0
    dropped: list[str] = field(default_factory=list)  # all-missing in training
    input_types: dict[str, str] = field(default_factory=dict)  # column -> Arrow type, as read
    train_rows: int = 0
    missing: dict[str, float] = field(default_factory=dict)  # column -> share of training rows missing it ({}: older)
    quantile_normal: list[float] = field(default_factory=list)  # standard-normal score of each quantile level
    # Edges of the piecewise-linear embedding bins of each model input column (x_num),
    # fitted on the prepared training sample; empty when there are no numeric inputs.
    bins: list[list[float]] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def features(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    @property
    def numeric_width(self) -> int:
        return len(self.numeric) + sum(c.indicator for c in self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        return [c.cardinality for c in self.categorical]

    @property
    def output_dim(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PreprocessState:
        d = json.loads(text)
        version = d.get("version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"unsupported preprocessing state version {version}")
        d["version"] = STATE_VERSION
        d["numeric"] = [NumericColumn(**c) for c in d["numeric"]]
        d["categorical"] = [CategoricalColumn(**c) for c in d["categorical"]]
        for c in d["categorical"] if version < 3 else ():
            c.categories = _canonical_keys(c.categories)
        return cls(**d)


def category_strings(values: pd.Series) -> pd.Series:
    """The canonical text of each categorical value, whatever it came from (CSV text,
    Parquet booleans, integers, floats, strings or dictionaries, JSON, pandas); None if
    missing. Training stores categories in this form, and every input is looked up in it:
    - booleans, and the texts true/false as CSV writers spell them: "True", "False";
    - whole numbers, as numbers or as text: their digits ("7" for 7, 7.0, "7.0" and "007");
      other finite numbers: the shortest text that reads back as the same float ("1.5");
    - a CSV reader's missing markers (NULL_TEXTS: "", "NA", "null", ...) are missing in
      any format, as a CSV file's are;
    - any other text as it is ("None" and "inf" stay words)."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values):
        texts = np.where(values.astype("boolean").fillna(False).to_numpy(bool), "True", "False").astype(object)
    elif pd.api.types.is_numeric_dtype(values):
        texts = _number_texts(values.to_numpy(np.float64, na_value=np.nan))
    elif pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        codes, uniques = pd.factorize(values.to_numpy(object), use_na_sentinel=True)
        texts = np.append(canonical_texts(np.asarray(uniques, dtype=object)), None)[codes]
    else:  # mixed Python objects, e.g. JSON records sent to the server: True and 1 stay apart
        items = values.to_numpy(object)
        is_text = np.fromiter((type(v) is str for v in items), dtype=bool, count=len(items))
        texts = np.empty(len(items), dtype=object)
        if is_text.any():  # the texts all at once, each distinct one parsed once
            codes, uniques = pd.factorize(items[is_text])
            texts[is_text] = canonical_texts(np.asarray(uniques, dtype=object))[codes]
        for i in np.flatnonzero(~is_text & ~missing):
            texts[i] = _scalar_text(items[i])
    texts[missing] = None
    return pd.Series(texts, index=values.index, dtype=object)


def _number_texts(nums: np.ndarray) -> np.ndarray:
    """`category_strings` of float64 values (NaN: anything; the caller masks it)."""
    with np.errstate(invalid="ignore"):
        integral = (np.floor(nums) == nums) & (np.abs(nums) < _EXACT)
    return np.where(integral, np.where(integral, nums, 0).astype(np.int64).astype(str),
                    nums.astype(str)).astype(object)


def canonical_texts(texts: np.ndarray) -> np.ndarray:
    """`category_strings` of texts (an object array, no missing values): best called on
    distinct values."""
    out = texts.copy()
    out[np.isin(texts, list(NULL_TEXTS))] = None
    out[np.isin(texts, _TRUE_TEXTS)] = "True"
    out[np.isin(texts, _FALSE_TEXTS)] = "False"
    nums = pd.to_numeric(pd.Series(out, dtype=object), errors="coerce").to_numpy(np.float64, na_value=np.nan)
    # A number as text, but not a long run of digits that float64 would round (an id)
    number = np.isfinite(nums) & ((np.abs(nums) < _EXACT) | (np.floor(nums) != nums))
    out[number] = _number_texts(nums[number])
    return out


def _scalar_text(v: Any) -> str | None:
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _number_texts(np.array([v], dtype=np.float64))[0]
    return canonical_texts(np.array([v if isinstance(v, str) else str(v)], dtype=object))[0]


def _canonical_keys(values: list[Any]) -> list[str]:
    """Each stored value (a category, a class) in `category_strings`' form; a later value
    with the same form as an earlier one gets a key that nothing matches (lookups need
    distinct keys, and the first keeps the rows it always had)."""
    keys = [_scalar_text(v) if v != MISSING else v for v in values]
    keys = [MISSING if k is None else k for k in keys]  # a stored "NA": missing now, as in any input
    seen: set[str] = set()
    for i, k in enumerate(keys):
        keys[i] = k if k not in seen else f"\x00{i}"
        seen.add(k)
    return keys


def transform(df: pd.DataFrame, state: PreprocessState, with_label: bool = True) -> dict[str, np.ndarray]:
    """Raw rows -> {"x_num": float32 [n, d], "x_cat": int64 [n, c], "y": ...}.

    Pure and stateless: the same function runs in Ray Data tasks, training workers,
    the batch predictor and the server.
    """
    out = {"x_num": numeric_inputs(df, state), "x_cat": categorical_inputs(df, state)}
    if with_label:
        out["y"] = encode_label(df[state.label], state)
    return out


def quantile_scale(v: np.ndarray, quantiles: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Values -> standard-normal scores, as scikit-learn's QuantileTransformer (normal
    output) maps them: the level of a value is linear between the training quantiles
    (taken at evenly spaced levels) and clipped outside them, then the score is the normal
    quantile of that level, here interpolated from the scores of the quantiles' levels. A
    value shared by several quantiles (a spike in the data) gets the middle of their
    levels: interpolating from both ends and averaging."""
    levels = np.linspace(0.0, 1.0, len(normal))
    up = np.interp(v, quantiles, levels)
    down = -np.interp(-v, -quantiles[::-1], -levels[::-1])
    return np.interp(0.5 * (up + down), levels, normal)


def numeric_inputs(df: pd.DataFrame, state: PreprocessState) -> np.ndarray:
    """The numeric columns scaled (missing: 0, the training centre), then their indicators.
    Infinite values count as missing, as they did when the preprocessing was fitted."""
    return numeric_matrix([numbers(df[c.name], c.name) for c in state.numeric], state, len(df))


def numbers(values: pd.Series, column: str) -> np.ndarray:
    """A numeric feature's values as float64 (NaN: missing); a value that is not a number
    (a word, not one of a CSV reader's missing markers) is a BadValue naming it, whatever the
    input's format, as a CSV file's is."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.to_numpy(np.float64, na_value=np.nan)
    nums = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    suspects = np.flatnonzero(np.isnan(nums) & ~values.isna().to_numpy())
    for i in suspects:
        value = values.iloc[i]
        if not (isinstance(value, str) and value in NULL_TEXTS) and not (isinstance(value, float) and value != value):
            raise BadValue(not_a_number(column, value))
    return nums


def numeric_matrix(columns: list[np.ndarray], state: PreprocessState, rows: int) -> np.ndarray:
    """`numeric_inputs` from each numeric column's values as float64 (NaN: missing)."""
    x_num = np.empty((rows, state.numeric_width), dtype=np.float32)
    j = len(state.numeric)
    for i, (col, v) in enumerate(zip(state.numeric, columns)):
        missing = ~np.isfinite(v)
        if col.quantiles is None:
            with np.errstate(over="ignore"):  # beyond float64: inf, clipped below
                scaled = np.clip((v - col.mean) / col.std, -STANDARD_LIMIT, STANDARD_LIMIT)
        else:
            scaled = quantile_scale(v, np.asarray(col.quantiles), np.asarray(state.quantile_normal))
        x_num[:, i] = np.where(missing, 0.0, scaled)
        if col.indicator:
            x_num[:, j] = missing
            j += 1
    return x_num


def tree_inputs(x_num: np.ndarray, x_cat: np.ndarray, state: PreprocessState) -> np.ndarray:
    """The prepared arrays as gradient-boosted trees read them, float32 [n, numeric +
    categorical]: each numeric column scaled (a monotone map, which trees do not mind), NaN
    where it was missing (its indicator column says so, where training saw it missing), then
    the category indices (0: a category not seen in training; missing values are a category
    of their own), which `tree_feature_types` marks categorical."""
    n_numeric = len(state.numeric)
    out = np.empty((len(x_num), n_numeric + x_cat.shape[1]), dtype=np.float32)
    out[:, :n_numeric] = x_num[:, :n_numeric]
    j = n_numeric
    for i, col in enumerate(state.numeric):
        if col.indicator:
            out[x_num[:, j] > 0.5, i] = np.nan
            j += 1
    out[:, n_numeric:] = x_cat
    return out


def tree_feature_types(state: PreprocessState) -> list[str]:
    """XGBoost's type of each column of `tree_inputs`: `q` numeric, `c` categorical."""
    return ["q"] * len(state.numeric) + ["c"] * len(state.categorical)


def categorical_inputs(df: pd.DataFrame, state: PreprocessState) -> np.ndarray:
    """Category indices: 1 + position in the training categories; 0 for unknown."""
    x_cat = np.empty((len(df), len(state.categorical)), dtype=np.int64)
    for i, col in enumerate(state.categorical):
        x_cat[:, i] = category_codes(category_strings(df[col.name]), col)
    return x_cat


def category_codes(texts: pd.Series, col: CategoricalColumn) -> np.ndarray:
    """The index of each canonical text (None: missing) in `categorical_inputs`."""
    return pd.Index(col.categories).get_indexer(texts.fillna(MISSING)) + 1


def encode_label(y: pd.Series, state: PreprocessState) -> np.ndarray:
    if state.task == "classification":
        return class_indices(category_strings(y), state)
    return scaled_target(pd.to_numeric(y, errors="coerce").to_numpy(np.float64), state)


def class_indices(texts: pd.Series, state: PreprocessState) -> np.ndarray:
    """The class of each canonical label text; -1: a class not seen in training."""
    return pd.Index(_canonical_keys(state.classes)).get_indexer(texts).astype(np.int64)


def scaled_target(v: np.ndarray, state: PreprocessState) -> np.ndarray:
    """A regression label as the network learns it: standardised, float32."""
    with np.errstate(over="ignore"):  # a label far beyond the training range: inf, not scorable
        return ((v - state.target_mean) / state.target_std).astype(np.float32)


def scorable(y: np.ndarray, state: PreprocessState) -> np.ndarray:
    """Rows whose encoded label can be trained on or scored: a class seen in training, or
    a number (a regression label that does not parse is left out, not trained as NaN)."""
    return y >= 0 if state.task == "classification" else np.isfinite(y)
