"""Deterministic train / valid / test split by a seeded hash of each row's content.

A row's split depends only on its values and `data.split.seed`, never on file order,
block layout or the number of workers, so the same data gives the same split on a
laptop and on a cluster, and the split can be recomputed anywhere without Ray.
Identical rows always land in the same split, which keeps duplicates from leaking
between training and test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.data.transform import category_strings

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_COLUMN = "__split__"


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    """The row values in a form that does not depend on how they were read: numbers as
    float64 (an int column with a gap arrives as float in some blocks and not in others),
    everything else as canonical text."""
    columns = {}
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            columns[name] = col.to_numpy(np.float64, na_value=np.nan)
        else:
            columns[name] = category_strings(col).to_numpy(object)
    return pd.DataFrame(columns)


def row_uniforms(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A number in [0, 1) per row, a pure function of the row's values and the seed."""
    key = f"{seed & 0xFFFFFFFFFFFFFFFF:016x}"
    hashes = pd.util.hash_pandas_object(canonical(df), index=False, hash_key=key).to_numpy(np.uint64)
    return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_split(df: pd.DataFrame, valid: float, test: float, seed: int) -> np.ndarray:
    """Split code per row: TRAIN, VALID or TEST, with the given fractions (test may be 0)."""
    u = row_uniforms(df, seed)
    codes = np.full(len(df), TRAIN, dtype=np.int8)
    codes[u < valid + test] = VALID
    codes[u < test] = TEST
    return codes
