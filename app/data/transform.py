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
STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: standard scaling only, no embedding bins


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
        if d.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"unsupported preprocessing state version {d.get('version')}")
        d["version"] = STATE_VERSION
        d["numeric"] = [NumericColumn(**c) for c in d["numeric"]]
        d["categorical"] = [CategoricalColumn(**c) for c in d["categorical"]]
        return cls(**d)


def category_strings(values: pd.Series) -> pd.Series:
    """Canonical text of categories, so 2007, 2007.0 and "2007" are one category; None if missing."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values):
        texts = np.where(values.astype("boolean").fillna(False).to_numpy(bool), "True", "False").astype(object)
    elif pd.api.types.is_numeric_dtype(values):
        nums = values.to_numpy(np.float64, na_value=np.nan)
        integral = (np.floor(nums) == nums) & (np.abs(nums) < 2**53)
        texts = np.where(integral, np.where(integral, nums, 0).astype(np.int64).astype(str),
                         nums.astype(str)).astype(object)
    elif pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        texts = values.to_numpy(object, copy=True)
    else:  # mixed Python objects, e.g. JSON records sent to the server
        texts = np.array([v if isinstance(v, str) else _scalar_text(v) for v in values], dtype=object)
    texts[missing] = None
    return pd.Series(texts, index=values.index, dtype=object)


def _scalar_text(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


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
    columns = [pd.to_numeric(df[c.name], errors="coerce").to_numpy(np.float64, na_value=np.nan) for c in state.numeric]
    return numeric_matrix(columns, state, len(df))


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
    keys = [_scalar_text(c) if not isinstance(c, str) else c for c in state.classes]
    return pd.Index(keys).get_indexer(texts).astype(np.int64)


def scaled_target(v: np.ndarray, state: PreprocessState) -> np.ndarray:
    """A regression label as the network learns it: standardised, float32."""
    with np.errstate(over="ignore"):  # a label far beyond the training range: inf, not scorable
        return ((v - state.target_mean) / state.target_std).astype(np.float32)


def scorable(y: np.ndarray, state: PreprocessState) -> np.ndarray:
    """Rows whose encoded label can be trained on or scored: a class seen in training, or
    a number (a regression label that does not parse is left out, not trained as NaN)."""
    return y >= 0 if state.task == "classification" else np.isfinite(y)
