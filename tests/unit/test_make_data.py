"""Tests for scripts/make_data.py (run as a subprocess; no Ray needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_data.py"

ROWS = 5000
PARTS = 3
COLUMNS = [f"num_{i}" for i in range(8)] + [
    "int_0", "int_1", "cat_0", "cat_1", "cat_2", "target"]


def run(out, *args, rows=ROWS, parts=PARTS, check=True):
    cmd = [sys.executable, str(SCRIPT), "--rows", str(rows), "--parts",
           str(parts), "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def read_dir(out, ext="parquet"):
    files = sorted(Path(out).glob(f"*.{ext}"))
    reader = pd.read_parquet if ext == "parquet" else pd.read_csv
    return files, pd.concat([reader(f) for f in files], ignore_index=True)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"  # does not exist yet
    proc = run(out, "--seed", "0")
    files, df = read_dir(out)
    return out, proc, files, df


def test_files_rows_columns(generated):
    out, proc, files, df = generated
    assert [f.name for f in files] == [
        f"part-{i:05d}.parquet" for i in range(PARTS)]
    sizes = [len(pd.read_parquet(f)) for f in files]
    assert sum(sizes) == ROWS and max(sizes) - min(sizes) <= 1
    assert len(df) == ROWS
    assert list(df.columns) == COLUMNS
    assert proc.stdout.strip().startswith(
        f"wrote {ROWS} rows in {PARTS} files to {out} (")
    assert proc.stdout.strip().endswith(" MB)")
    # no temporary leftovers
    assert sorted(p.name for p in Path(out).iterdir()) == [f.name for f in files]


def test_missing_values_and_classes(generated):
    _, _, _, df = generated
    assert df["num_1"].isna().sum() > 0
    assert df["num_6"].isna().sum() > 0
    assert df["cat_1"].isna().sum() > 0
    assert 0.02 < df["num_1"].isna().mean() < 0.08
    assert 0.01 < df["cat_1"].isna().mean() < 0.05
    assert df["target"].notna().all()
    assert df["cat_0"].notna().all() and df["cat_2"].notna().all()
    assert set(df["target"]) == {"low", "mid", "high"}
    shares = df["target"].value_counts(normalize=True)
    assert (shares >= 0.20).all(), shares
    assert set(df["cat_0"]) <= set("abcde")
    assert df["int_0"].between(0, 100).all() and (df["int_1"] >= 0).all()


def test_deterministic_per_seed(generated, tmp_path):
    _, _, _, df = generated
    run(tmp_path / "same", "--seed", "0")
    _, df_same = read_dir(tmp_path / "same")
    pd.testing.assert_frame_equal(df, df_same)

    run(tmp_path / "other", "--seed", "1")
    _, df_other = read_dir(tmp_path / "other")
    assert len(df_other) == len(df)
    assert not df.equals(df_other)
    assert not df["num_0"].equals(df_other["num_0"])


def test_refuses_existing_files_without_overwrite(tmp_path):
    out = tmp_path / "ds"
    run(out, rows=50)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = run(out, rows=50, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() and len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # --overwrite replaces the old files (here: fewer parts, other format)
    run(out, "--overwrite", "--format", "csv", rows=50, parts=2)
    assert sorted(p.name for p in out.iterdir()) == [
        "part-00000.csv", "part-00001.csv"]


def test_regression_csv(tmp_path):
    out = tmp_path / "reg"
    run(out, "--task", "regression", "--format", "csv", rows=1000, parts=2)
    files, df = read_dir(out, "csv")
    assert len(files) == 2 and len(df) == 1000
    assert list(df.columns) == COLUMNS
    assert pd.api.types.is_float_dtype(df["target"])
    assert df["target"].notna().all() and df["target"].std() > 0.5
    assert df["num_1"].isna().any() and df["cat_1"].isna().any()


def test_signal_is_learnable(generated):
    from sklearn.ensemble import RandomForestClassifier

    _, _, _, df = generated
    y = df["target"].to_numpy()
    X = df.drop(columns="target")
    X = X.fillna(X.median(numeric_only=True))
    # one-hot the small categoricals (missing -> own column), codes for cat_2
    X = pd.get_dummies(X, columns=["cat_0", "cat_1"], dummy_na=True)
    X["cat_2"] = X["cat_2"].astype("category").cat.codes
    model = RandomForestClassifier(n_estimators=50, random_state=0)
    model.fit(X.iloc[:4000], y[:4000])
    acc = model.score(X.iloc[4000:], y[4000:])
    assert acc > 0.6, acc
