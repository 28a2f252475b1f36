"""A CSV saved with its pandas index: the unnamed column is named in a warning that says how
to leave it out, unless it already is."""

from __future__ import annotations

import pandas as pd
import pytest

from app.config import from_dict
from app.data.prepare import inspect_sources

pytestmark = pytest.mark.usefixtures("ray_must_not_start")  # (tests/conftest.py)

FRAME = pd.DataFrame({"a": [0.5, 1.5, 2.5, 3.5], "c": ["p", "q", "p", "q"], "y": [0, 1, 0, 1]})


def inspect(path, **data):
    return inspect_sources(from_dict({"name": "t", "data": {"train": str(path), "label": "y", **data}}, "config"))


def warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]


def test_a_saved_index_is_named_with_the_drop_that_leaves_it_out(tmp_path, capsys):
    FRAME.to_csv(tmp_path / "indexed.csv")  # header ",a,c,y"
    assert "" in inspect(tmp_path / "indexed.csv").kinds
    [warning] = warnings(capsys)
    assert warning.startswith("warning: data.train: column(s) '' look like a pandas index saved with the data")
    assert "data.drop: ['']" in warning

    assert "" not in inspect(tmp_path / "indexed.csv", drop=[""]).kinds
    assert warnings(capsys) == []


def test_an_index_saved_twice_names_both_columns(tmp_path, capsys):
    FRAME.to_csv(tmp_path / "once.csv")
    pd.read_csv(tmp_path / "once.csv").to_csv(tmp_path / "twice.csv")  # header ",Unnamed: 0,a,c,y"
    inspect(tmp_path / "twice.csv")
    [warning] = warnings(capsys)
    assert "data.drop: ['', 'Unnamed: 0']" in warning


def test_no_warning_without_an_index_or_when_the_features_are_listed(tmp_path, capsys):
    FRAME.to_csv(tmp_path / "plain.csv", index=False)
    assert set(inspect(tmp_path / "plain.csv").kinds) == {"a", "c"}
    FRAME.to_csv(tmp_path / "indexed.csv")
    assert set(inspect(tmp_path / "indexed.csv", features=["a", "c"]).kinds) == {"a", "c"}
    assert warnings(capsys) == []
