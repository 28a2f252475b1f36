"""`raytab init` / `app.init_config`: a commented config for a table, written without Ray,
that validates as a Config and passes train's preflight as it is."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from app.cli import main
from app.config import from_dict, parse_yaml
from app.starter import default_name, starter_config
from tests.conftest import PENGUINS

COLUMNS = ["species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year"]


pytestmark = pytest.mark.usefixtures("ray_must_not_start")  # (tests/conftest.py)


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_penguins_config_validates_names_the_label_and_lists_the_columns():
    text = starter_config(str(PENGUINS), "species")
    cfg = from_dict(parse_yaml(text), "init")
    assert cfg.name == "penguins" and cfg.data.label == "species" and cfg.data.train == str(PENGUINS)
    assert cfg.data.task == "auto" and cfg.data.features is None and cfg.data.drop == []
    assert cfg.train.epochs == "auto" and cfg.run.storage == "runs"
    assert "auto: classification (text label, 3 classes in the first 344 rows)" in text
    for column in COLUMNS:
        assert re.search(rf"^  #   {column}: ", text, re.MULTILINE), column
    assert "#   island: categorical" in text and "#   bill_length_mm: numeric" in text
    # every value line carries a comment saying what it means
    for line in text.splitlines():
        if re.match(r"\s*\w+: \S", line):
            assert " # " in line, line


def test_the_commented_tune_section_is_a_valid_sweep():
    text = starter_config(str(PENGUINS), "species")
    start = text.index("# tune:")
    uncommented = text[:start] + "\n".join(line[2:] for line in text[start:].splitlines()) + "\n"
    cfg = from_dict(parse_yaml(uncommented), "init")
    assert set(cfg.tune.space) == {"train.lr", "model.k"}


def test_regression_ids_and_unreadable_columns(tmp_path):
    df = pd.read_csv(PENGUINS)
    df.insert(0, "PassengerId", range(len(df)))
    df["nickname"] = [f"bird {i}" for i in range(len(df))]
    df["seen"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(range(len(df)), unit="D")
    path = tmp_path / "my birds #1.parquet"
    df.to_parquet(path)
    text = starter_config(str(path), "body_mass_g")
    cfg = from_dict(parse_yaml(text), "init")
    assert cfg.name == "my_birds_1" and cfg.data.train == str(path)
    assert cfg.data.drop == ["PassengerId", "nickname", "seen"]
    assert "auto: regression (numeric label" in text
    assert "#   seen: type timestamp" in text and "looks like an id (named like an id)" in text


def test_explicit_task_and_name():
    text = starter_config(str(PENGUINS), "year", name="birds-by-year", task="regression")
    cfg = from_dict(parse_yaml(text), "init")
    assert (cfg.name, cfg.data.task) == ("birds-by-year", "regression")


@pytest.mark.parametrize("data, name", [("data/penguins.csv", "penguins"), ("s3://b/x/My Table.v2.parquet",
                                        "My_Table.v2"), ("data/parts/*.csv", "parts"), ("__x__.csv", "x__"),
                                       ("*.csv", "run")])
def test_default_name_follows_the_name_rule(data, name):
    assert default_name(data) == name


def test_the_written_config_passes_train_preflight(tmp_path, monkeypatch):
    import app
    from app.config import load_config
    from app.runner import preflight

    monkeypatch.chdir(tmp_path)
    path = app.init_config(str(PENGUINS), "species")
    assert path == "penguins.yaml" and (tmp_path / path).is_file()
    assert list(tmp_path.iterdir()) == [tmp_path / "penguins.yaml"]  # no temporary file left behind
    cfg = load_config(path, [f"run.storage={tmp_path / 'runs'}"])
    inputs = preflight(cfg)
    assert set(inputs.kinds) == set(COLUMNS) - {"species"}
    assert app.init_config(str(PENGUINS), "species", output="again.yaml") == "again.yaml"  # twice in a process


def test_cli_writes_then_refuses_to_overwrite_without_force(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", str(PENGUINS), "--label", "species"]) == 0
    out = capsys.readouterr()
    assert "written: penguins.yaml; train it with: raytab train --config penguins.yaml" in out.out + out.err
    first = (tmp_path / "penguins.yaml").read_text()
    assert "raytab train --config penguins.yaml" in first

    assert main(["init", str(PENGUINS), "--label", "species"]) == 2
    error = one_error(capsys)
    assert "penguins.yaml" in error and "--force" in error
    assert main(["init", str(PENGUINS), "--label", "species", "--name", "other", "--force",
                 "--output", "penguins.yaml"]) == 0
    assert "name: other" in (tmp_path / "penguins.yaml").read_text()


def test_cli_refuses_a_bad_label_a_missing_file_and_a_bad_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", str(PENGUINS), "--label", "specie"]) == 2
    error = one_error(capsys)
    assert "--label" in error and "'specie'" in error and ", ".join(COLUMNS) in error
    assert main(["init", "nope.csv", "--label", "species"]) == 2
    assert "DATA: nope.csv does not exist" in one_error(capsys)
    assert main(["init", str(PENGUINS), "--label", "species", "--name", "no/slash"]) == 2
    assert "--name" in one_error(capsys)
    assert list(tmp_path.iterdir()) == []
