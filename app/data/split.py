"""Deterministic train / valid / test split by a seeded hash of each row's content.

A row's split depends only on its values and `data.split.seed`, never on file order,
block layout or the number of workers, so the same data gives the same split on a
laptop and on a cluster, and the split can be recomputed anywhere without Ray.
Identical rows always land in the same split, which keeps duplicates from leaking
between training and test.

`RowValues` is how the data step sees a batch of rows (an Arrow table as read, or a
pandas DataFrame): each column in a canonical form computed once and shared by the
split, the stats and the transform. Numbers are float64 (an int column with a gap
arrives as float in some blocks and not in others); everything else is canonical text
(app/data/transform.py `category_strings`), held as codes into the column's distinct
values, so that work per text value (hashing, parsing, looking up categories) is done
once per distinct value, not once per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from app.data.transform import canonical_texts, category_strings

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_COLUMN = "__split__"
_MISSING_HASH = np.uint64(np.iinfo(np.uint64).max)  # pandas' hash of a missing category


@dataclass
class Texts:
    """A column as canonical text: `codes` index `texts` (-1: missing)."""

    codes: np.ndarray  # int64, one per row
    texts: np.ndarray  # object: str (not necessarily distinct)
    arrow: pa.DictionaryArray | None = None  # an Arrow text column: itself, dictionary-encoded


class RowValues:
    """The columns of one batch of rows in their canonical forms, each computed on first use."""

    def __init__(self, rows: pa.Table | pd.DataFrame):
        self.rows = rows
        self.names = list(rows.column_names if isinstance(rows, pa.Table) else rows.columns)
        self._numbers: dict[str, np.ndarray] = {}
        self._number_hashes: dict[str, np.ndarray] = {}  # (a number's hash does not depend on the key)
        self._texts: dict[str, Texts] = {}
        self._series: dict[str, pd.Series] = {}

    def __len__(self) -> int:
        return self.rows.num_rows if isinstance(self.rows, pa.Table) else len(self.rows)

    def series(self, name: str) -> pd.Series:
        """The column as pandas holds it (for Arrow input: as Ray Data's pandas batches do)."""
        if name not in self._series:
            rows = self.rows
            self._series[name] = rows.column(name).to_pandas() if isinstance(rows, pa.Table) else rows[name]
        return self._series[name]

    def _form(self, name: str) -> str | None:
        """"numbers", "text", "bool" or "null" for Arrow columns whose type says it; None:
        decided by the pandas rules, on the column converted."""
        if not isinstance(self.rows, pa.Table):
            return None
        t = self.rows.schema.field(name).type
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return "numbers"
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "text"
        return "bool" if pa.types.is_boolean(t) else "null" if pa.types.is_null(t) else None

    def is_numeric(self, name: str) -> bool:
        """Held as numbers (pandas: a numeric dtype other than bool)."""
        form = self._form(name)
        if form is not None:
            return form == "numbers"
        col = self.series(name)
        return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)

    def is_text(self, name: str) -> bool:
        """Held as text or untyped values: neither numbers nor booleans (the columns whose
        values are checked for numbers stored as text)."""
        form = self._form(name)
        if form is not None:
            return form in ("text", "null")
        col = self.series(name)
        return not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)) \
            and pd.api.types.infer_dtype(col, skipna=True) != "boolean"

    def numbers(self, name: str) -> np.ndarray:
        """float64 per row, NaN where missing or not a number (`pd.to_numeric(errors="coerce")`)."""
        if name not in self._numbers:
            form = self._form(name)
            if form == "numbers":  # nulls arrive as NaN
                values = self.rows.column(name).to_numpy().astype(np.float64, copy=False)
            elif form == "null":
                values = np.full(len(self), np.nan)
            else:
                values = pd.to_numeric(self.series(name), errors="coerce").to_numpy(np.float64, na_value=np.nan)
            self._numbers[name] = values
        return self._numbers[name]

    def missing(self, name: str) -> np.ndarray:
        """True where the value is missing (null, None or NaN: pandas' `isna`)."""
        if self.is_numeric(name):
            return np.isnan(self.numbers(name))
        return self.texts(name).codes < 0

    def texts(self, name: str) -> Texts:
        """The column as canonical text (`category_strings`), one code per row."""
        if name not in self._texts:
            form = self._form(name)
            if form == "text":
                column = self.rows.column(name).combine_chunks()
                if not pa.types.is_dictionary(column.type) or column.dictionary.null_count:
                    column = pc.dictionary_encode(column.cast(pa.string()))
                codes = column.indices.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)  # uint indices too
                texts = canonical_texts(column.dictionary.to_numpy(zero_copy_only=False).astype(object))
                null = pd.isna(texts)
                if null.any():  # a missing marker ("NA", "") held as text: missing, as a CSV reader makes it
                    codes = np.where(codes >= 0, np.where(null, -1, np.arange(len(texts)))[np.maximum(codes, 0)], -1)
                self._texts[name] = Texts(codes, texts, column)
            elif form == "bool":
                codes = self.rows.column(name).cast(pa.int64()).fill_null(-1).to_numpy()  # False 0, True 1
                self._texts[name] = Texts(codes, np.array(["False", "True"], dtype=object))
            elif self.is_numeric(name):  # the text of each distinct number
                codes, uniques = pd.factorize(self.numbers(name), use_na_sentinel=True)
                self._texts[name] = Texts(codes.astype(np.int64), category_strings(pd.Series(uniques)).to_numpy(object))
            else:  # per row: in a column of mixed values, True and 1 are different texts
                codes, uniques = pd.factorize(category_strings(self.series(name)).to_numpy(object), use_na_sentinel=True)
                self._texts[name] = Texts(codes.astype(np.int64), np.asarray(uniques, dtype=object))
        return self._texts[name]

    def not_numbers(self, name: str) -> np.ndarray:
        """Per row: a value that `pd.to_numeric` does not take for a number (missing: False)."""
        t = self.texts(name)
        if t.arrow is not None:  # text: parse each distinct value once
            failed = np.isnan(pd.to_numeric(t.texts, errors="coerce").astype(np.float64))
            return np.append(failed, False)[t.codes]
        present, out = t.codes >= 0, np.zeros(len(self), dtype=bool)
        values = self.series(name).to_numpy(object)[present]
        # via numpy: on Arrow-backed text, to_numeric marks failures NaN but not NA
        out[present] = np.isnan(pd.to_numeric(values, errors="coerce").astype(np.float64))
        return out

    def value(self, name: str, row: int) -> Any:
        """The value in one row, as the column holds it."""
        if self.texts(name).arrow is not None:
            return self.rows.column(name)[row].as_py()
        return self.series(name).iloc[row]

    def compact(self, names: list[str]) -> pa.Table:
        """The Arrow columns `names`, text dictionary-encoded: smaller, and the RowValues of
        the result finds the encoding done."""
        form = {n: self._form(n) for n in names}
        return pa.table({n: self.texts(n).arrow if form[n] == "text" else self.rows.column(n) for n in names})

    def hashes(self, name: str, key: str) -> np.ndarray:
        """pandas' hash of each row's canonical value (`hash_pandas_object` of the column):
        numbers by their bits, texts by a keyed hash of their UTF-8 bytes."""
        if self.is_numeric(name):
            if name not in self._number_hashes:
                self._number_hashes[name] = pd.util.hash_array(self.numbers(name))
            return self._number_hashes[name]
        t = self.texts(name)
        hashed = pd.util.hash_array(t.texts, hash_key=key, categorize=False) if len(t.texts) else np.zeros(1, np.uint64)
        return np.where(t.codes >= 0, hashed[np.maximum(t.codes, 0)], _MISSING_HASH)

    def uniforms(self, seed: int, names: list[str] | None = None) -> np.ndarray:
        """A number in [0, 1) per row, a pure function of the values in `names` (default:
        every column) and the seed."""
        names = self.names if names is None else names
        key = f"{seed & 0xFFFFFFFFFFFFFFFF:016x}"
        hashes = combine_hashes([self.hashes(n, key) for n in names], len(self))
        return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def combine_hashes(columns: list[np.ndarray], length: int) -> np.ndarray:
    """Per row, one uint64 hash of the row's column hashes, in column order: the arithmetic of
    pandas' `hash_pandas_object` over a DataFrame (CPython's tuple hash), written out here
    because pandas keeps it private (pandas.core.util.hashing.combine_hash_arrays) and a
    row's split must never change with a pandas release. `length`: the rows, for no columns."""
    out = np.full(length, 0x345678, dtype=np.uint64)
    mult = np.uint64(1000003)
    for i, column in enumerate(columns):
        out ^= column
        out *= mult
        mult += np.uint64(82520 + 2 * (len(columns) - i))
    return out + np.uint64(97531)


def split_codes(rows: RowValues, valid: float, test: float, seed: int) -> np.ndarray:
    """Split code per row: TRAIN, VALID or TEST, with the given fractions (test may be 0)."""
    u = rows.uniforms(seed)
    codes = np.full(len(u), TRAIN, dtype=np.int8)
    codes[u < valid + test] = VALID
    codes[u < test] = TEST
    return codes


def assign_split(df: pd.DataFrame | pa.Table, valid: float, test: float, seed: int) -> np.ndarray:
    """Split code per row of a DataFrame or Arrow table (the same codes for the same rows
    read either way)."""
    return split_codes(RowValues(df), valid, test, seed)


def row_uniforms(df: pd.DataFrame | pa.Table, seed: int) -> np.ndarray:
    """A number in [0, 1) per row, a pure function of the row's values and the seed."""
    return RowValues(df).uniforms(seed)

