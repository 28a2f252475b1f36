#!/usr/bin/env python
"""Write a synthetic tabular dataset for scale tests and benchmarks.

Standalone: depends only on numpy and pyarrow (not on the ``app`` package).

Usage::

    python scripts/make_data.py --rows N --out DIR [--parts P]
        [--task classification|regression] [--seed S] [--format parquet|csv]
        [--overwrite]

Writes ``DIR/part-00000.<ext>`` ... ``DIR/part-<P-1>.<ext>``. Rows are split
as evenly as possible over the parts (the first ``rows % parts`` parts get one
extra row); reading the parts in name order gives the rows in generation order.

Columns (in this order):

* ``num_0`` .. ``num_7``  float64
    num_0 ~ uniform(-3, 3)       num_4 ~ normal(0, 1)
    num_1 ~ normal(0, 1)         num_5 ~ normal(0, 3)
    num_2 ~ normal(0, 1)         num_6 ~ lognormal(0, 1)   (distractor)
    num_3 ~ normal(0, 1)         num_7 ~ uniform(0, 10)    (distractor)
* ``int_0``  int64, uniform over 0..100 (inclusive)
* ``int_1``  int64, Poisson(3) (count-like)
* ``cat_0``  string, 5 levels "a".."e" (mildly skewed)
* ``cat_1``  string, 20 levels "c00".."c19" (uniform)
* ``cat_2``  string, 100 levels "k000".."k099", Zipf-like skew (k000 most
  frequent); carries no signal
* ``target`` classification: string "low" / "mid" / "high";
  regression: float64

Signal (computed from the values *before* missing values are injected)::

    f = 2*sin(num_0) + num_1*num_2 + (num_3 > 0)*num_4 + log1p(|num_5|)
        + eff0[cat_0] + eff1[cat_1] + 0.01*int_0 + noise

``eff0`` / ``eff1`` are per-level effect tables drawn once from ``--seed``
(identical for every part). For regression ``target = f``. For
classification ``f`` is cut at its terciles, which are estimated once from a
fixed 100k-row sample drawn from ``--seed`` so that every part uses the same
thresholds; the three classes therefore hold about 1/3 of the rows each.

Missing values: about 5% of num_1 and num_6 and about 3% of cat_1 are
missing (stored as nulls, i.e. NaN / None in pandas; empty fields in CSV).
``target`` is never missing.

Determinism: the output depends only on (rows, parts, seed, task). Each part
uses its own numpy Generator seeded from (seed, part index), and is generated
in fixed-size chunks so memory stays bounded for any number of rows per part.
Each file is written to a hidden temporary name in DIR and then moved into
place with ``os.replace``, so a crash never leaves a partial file under a
final name.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# Rows generated (and written as one parquet row group / CSV batch) at a time.
# Part of the output definition: changing it changes the generated data.
CHUNK_ROWS = 1 << 19  # 524288

NOISE_STD = 0.5
THRESHOLD_SAMPLE_ROWS = 100_000

CAT0_LEVELS = ["a", "b", "c", "d", "e"]
CAT0_PROBS = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
CAT1_LEVELS = [f"c{i:02d}" for i in range(20)]
CAT2_LEVELS = [f"k{i:03d}" for i in range(100)]
_zipf = 1.0 / np.arange(1, 101) ** 1.1
CAT2_PROBS = _zipf / _zipf.sum()
CLASS_LABELS = ["low", "mid", "high"]

NUM_COLS = [f"num_{i}" for i in range(8)]
COLUMNS = NUM_COLS + ["int_0", "int_1", "cat_0", "cat_1", "cat_2", "target"]

MISSING_NUM = {"num_1": 0.05, "num_6": 0.05}
MISSING_CAT1 = 0.03

# Stream identifiers mixed into the seed so that part streams, the effect
# tables and the threshold sample never share random numbers.
_STREAM_PART, _STREAM_TABLES, _STREAM_THRESHOLDS = 1, 2, 3


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


class Spec:
    """Everything shared by all parts: effect tables and class thresholds."""

    def __init__(self, seed: int, task: str):
        t = _rng(seed, _STREAM_TABLES)
        self.task = task
        self.eff0 = t.normal(0.0, 1.0, len(CAT0_LEVELS))
        self.eff1 = t.normal(0.0, 0.7, len(CAT1_LEVELS))
        self.thresholds = None
        if task == "classification":
            sample = _generate(_rng(seed, _STREAM_THRESHOLDS),
                               THRESHOLD_SAMPLE_ROWS, self)
            self.thresholds = np.quantile(sample["f"], [1 / 3, 2 / 3])


def _generate(rng: np.random.Generator, n: int, spec: Spec) -> dict:
    """Draw n rows: returns numpy arrays (no missing values yet) plus f."""
    d = {
        "num_0": rng.uniform(-3.0, 3.0, n),
        "num_1": rng.standard_normal(n),
        "num_2": rng.standard_normal(n),
        "num_3": rng.standard_normal(n),
        "num_4": rng.standard_normal(n),
        "num_5": rng.normal(0.0, 3.0, n),
        "num_6": rng.lognormal(0.0, 1.0, n),
        "num_7": rng.uniform(0.0, 10.0, n),
        "int_0": rng.integers(0, 101, n, dtype=np.int64),
        "int_1": rng.poisson(3.0, n).astype(np.int64),
        "cat_0": rng.choice(len(CAT0_LEVELS), n, p=CAT0_PROBS).astype(np.int32),
        "cat_1": rng.integers(0, len(CAT1_LEVELS), n, dtype=np.int32),
        "cat_2": rng.choice(len(CAT2_LEVELS), n, p=CAT2_PROBS).astype(np.int32),
    }
    f = 2.0 * np.sin(d["num_0"])
    f += d["num_1"] * d["num_2"]
    f += (d["num_3"] > 0) * d["num_4"]
    f += np.log1p(np.abs(d["num_5"]))
    f += spec.eff0[d["cat_0"]]
    f += spec.eff1[d["cat_1"]]
    f += 0.01 * d["int_0"]
    f += rng.normal(0.0, NOISE_STD, n)
    d["f"] = f
    return d


def _schema(task: str) -> pa.Schema:
    fields = [pa.field(c, pa.float64()) for c in NUM_COLS]
    fields += [pa.field("int_0", pa.int64()), pa.field("int_1", pa.int64())]
    fields += [pa.field(c, pa.string()) for c in ("cat_0", "cat_1", "cat_2")]
    fields.append(pa.field("target", pa.string() if task == "classification"
                           else pa.float64(), nullable=False))
    return pa.schema(fields)


_DICTS = {
    "cat_0": pa.array(CAT0_LEVELS, pa.string()),
    "cat_1": pa.array(CAT1_LEVELS, pa.string()),
    "cat_2": pa.array(CAT2_LEVELS, pa.string()),
}
_CLASS_DICT = pa.array(CLASS_LABELS, pa.string())


def _make_chunk(rng: np.random.Generator, n: int, spec: Spec,
                schema: pa.Schema) -> pa.Table:
    d = _generate(rng, n, spec)
    arrays = []
    for c in NUM_COLS:
        x = d[c]
        if c in MISSING_NUM:
            mask = rng.random(n) < MISSING_NUM[c]
            arrays.append(pa.array(x, pa.float64(), mask=mask))
        else:
            arrays.append(pa.array(x, pa.float64()))
    arrays.append(pa.array(d["int_0"], pa.int64()))
    arrays.append(pa.array(d["int_1"], pa.int64()))
    for c in ("cat_0", "cat_1", "cat_2"):
        mask = rng.random(n) < MISSING_CAT1 if c == "cat_1" else None
        idx = pa.array(d[c], pa.int32(), mask=mask)
        arrays.append(pc.take(_DICTS[c], idx))
    if spec.task == "classification":
        cls = np.searchsorted(spec.thresholds, d["f"], side="right")
        arrays.append(pc.take(_CLASS_DICT, pa.array(cls.astype(np.int32))))
    else:
        arrays.append(pa.array(d["f"], pa.float64()))
    return pa.Table.from_arrays(arrays, schema=schema)


def _part_sizes(rows: int, parts: int) -> list[int]:
    base, extra = divmod(rows, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _write_part(path: str, rows: int, part: int, seed: int, spec: Spec,
                fmt: str) -> None:
    schema = _schema(spec.task)
    rng = _rng(seed, _STREAM_PART, part)
    tmp = os.path.join(os.path.dirname(path),
                       f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            writer = pq.ParquetWriter(tmp, schema)
        else:
            writer = pacsv.CSVWriter(tmp, schema)
        with writer:
            left = rows
            while left > 0:
                n = min(CHUNK_ROWS, left)
                writer.write_table(_make_chunk(rng, n, spec, schema))
                left -= n
            if rows == 0 and fmt == "parquet":
                writer.write_table(schema.empty_table())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _existing_data_files(out: str) -> list[str]:
    return sorted(
        os.path.join(out, name) for name in os.listdir(out)
        if name.endswith((".parquet", ".csv"))
        and os.path.isfile(os.path.join(out, name))
    )


def _fail(msg: str) -> NoReturn:
    print(f"make_data: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Write a synthetic tabular dataset (scale tests / "
                    "benchmarks).")
    p.add_argument("--rows", type=int, default=200_000,
                   help="total number of rows (default 200000)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--parts", type=int, default=8,
                   help="number of files (default 8)")
    p.add_argument("--task", choices=["classification", "regression"],
                   default="classification")
    p.add_argument("--seed", type=int, default=0, help="seed (>= 0)")
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    p.add_argument("--overwrite", action="store_true",
                   help="delete existing .parquet/.csv files in --out first")
    args = p.parse_args(argv)
    if args.rows < 0:
        p.error("--rows must be >= 0")
    if args.parts < 1:
        p.error("--parts must be >= 1")
    if args.seed < 0:
        p.error("--seed must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        _fail(f"{out} exists and is not a directory")
    os.makedirs(out, exist_ok=True)

    existing = _existing_data_files(out)
    if existing:
        if not args.overwrite:
            _fail(f"{out} already contains {len(existing)} .parquet/.csv "
                  f"file(s); pass --overwrite to replace them")
        for path in existing:
            os.remove(path)

    spec = Spec(args.seed, args.task)
    ext = "parquet" if args.format == "parquet" else "csv"
    total_bytes = 0
    for part, n in enumerate(_part_sizes(args.rows, args.parts)):
        path = os.path.join(out, f"part-{part:05d}.{ext}")
        _write_part(path, n, part, args.seed, spec, args.format)
        total_bytes += os.path.getsize(path)

    print(f"wrote {args.rows} rows in {args.parts} files to {out} "
          f"({total_bytes / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
