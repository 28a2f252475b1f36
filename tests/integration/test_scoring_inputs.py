"""Valid files are accepted whatever their columns hold beyond the model's: a pass-through
column is written as it was read, and labels that cannot be scored are left out and
counted; a word in a numeric feature is one line. On a real Ray. (A dropped column is never
read: tests/integration/test_calibrated_run.py trains on a file whose dropped column would
not parse.)"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import app
from tests.unit.test_scoring_path import fitted_checkpoint


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=300), "k": rng.choice(["a", "b"], 300)})
    df["y"] = df["x"] * 3 + (df["k"] == "a")
    return fitted_checkpoint(tmp_path_factory.mktemp("regression"), df, "y")


def test_labels_that_cannot_be_scored_are_left_out_and_counted(ray_session, regression, tmp_path, caplog):
    df = pd.DataFrame({"id": [f"{i:05d}" for i in range(1000, 1010)], "x": np.linspace(-1, 1, 10),
                       "k": ["a", "b"] * 5, "y": [str(v) for v in range(10)]})
    df.loc[3, "y"] = "n/a (broken sensor)"
    df.to_csv(tmp_path / "eval.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="app"):
        result = app.evaluate(str(regression), str(tmp_path / "eval.csv"))
    assert result["rows"] == 9 and result["unusable_labels"] == 1
    assert "1 row(s) have a label 'y' that is not a number; they are left out" in caplog.text

    df["y"] = "unknown"
    df.to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(app.UserError, match=r"none.csv: no row has a usable label 'y' to score \(10 labelled"):
        app.evaluate(str(regression), str(tmp_path / "none.csv"))

    # predict passes every column the model does not read through as it was written
    written = app.predict(str(regression), str(tmp_path / "eval.csv"), str(tmp_path / "out.csv"))
    out = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert written == 10 and out["id"].tolist() == df["id"].tolist() and out["y"][3] == "n/a (broken sensor)"


def test_a_word_in_a_numeric_feature_of_a_parquet_input_is_one_line_not_a_ray_traceback(regression, tmp_path):
    """Parquet keeps a writer's text column as text: the word is found when the block is
    scored in a Ray task, and comes back as the same one-line message a CSV file gets."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": ["0.5", "heavy"], "k": ["a", "b"]}), tmp_path / "in.parquet")
    with pytest.raises(app.UserError) as refused:
        app.predict(str(regression), str(tmp_path / "in.parquet"), str(tmp_path / "out.csv"))
    assert str(refused.value).endswith("in.parquet: column 'x' holds 'heavy', which is not a number")
    assert "\n" not in str(refused.value) and not (tmp_path / "out.csv").exists()
