"""`evaluate --importance` on the shared local Ray: the sample taken by Ray Data tasks, the
shuffles in one Ray task per feature, the JSON and the printed table; the same ranking as
`Model.feature_importance` computes in this process (tests/unit/test_importance.py has the
tables whose truth is known by construction, and the checks that need no Ray)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import app
from app.cli import main
from app.importance import sample_dataset, sample_rows
from tests.unit.test_importance import FEATURES, assert_driver_first, known_table, trained_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(trained_checkpoint(tmp_path_factory.mktemp("importance"), "classification"))


def test_evaluate_importance_on_the_cluster(ray_session, checkpoint, tmp_path, capsys):
    holdout = known_table("classification", 300, seed=2)
    holdout.to_csv(tmp_path / "holdout.csv", index=False)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", str(tmp_path / "holdout.csv"), "--importance",
                 "--repeats", "2", "--max-rows", "200", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == 300 and result["importance"] == {"metric": "log_loss", "rows": 200, "repeats": 2,
                                                              "seed": 0}
    assert all(set(r) == {"feature", "importance", "stddev"} for r in result["feature_importance"])
    assert_driver_first(result["feature_importance"], "x")

    printed = capsys.readouterr()
    table = (printed.out + printed.err).split("feature importance: increase in log_loss when the feature is shuffled "
                                              "(mean ± stddev of 2 shuffles of 200 rows)\n", 1)[1].splitlines()
    assert table[0].split() == ["feature", "importance", "stddev"]
    assert [line.split()[0] for line in table[1:5]] == [r["feature"] for r in result["feature_importance"]]
    assert table[1].split()[1:] == [f"{result['feature_importance'][0]['importance']:.4f}", "±",
                                    f"{result['feature_importance'][0]['stddev']:.4f}"]

    # the same sample, and so the same numbers, in this process
    here = app.load_model(checkpoint).feature_importance(holdout, repeats=2, max_rows=200)
    assert list(here["feature"]) == [r["feature"] for r in result["feature_importance"]]
    assert list(here["importance"]) == pytest.approx([r["importance"] for r in result["feature_importance"]],
                                                     abs=1e-6)


def test_the_cluster_sample_does_not_depend_on_the_blocks(ray_session, checkpoint):
    import ray.data

    state = app.load_model(checkpoint)._predictor.state
    rows = pd.concat([known_table("classification", 60, seed=3)] * 4, ignore_index=True)  # the cut falls on copies
    rows.loc[::7, "y"] = None
    expected = sample_rows(rows, state, 70, seed=1)
    assert len(expected) == 70
    for blocks in ([rows], [rows.iloc[:50], rows.iloc[50:130], rows.iloc[130:]]):
        sample = sample_dataset(ray.data.from_pandas(blocks), state, 70, seed=1)
        assert sorted(sample.columns) == sorted(FEATURES | {"y"})
        pd.testing.assert_frame_equal(sample.astype(expected.dtypes.to_dict()), expected)  # (Ray Data's: Arrow dtypes)
