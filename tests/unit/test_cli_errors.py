"""Bad input through `app.cli.main` in this process: exit 2, one line on stderr naming the
problem, no traceback, and no Ray started. These are the checks that fail before Ray;
tests/e2e/test_cli.py::test_missing_file keeps one of them in a real subprocess, and the
bad input only Ray can find (the stats pass, the cluster's resources) stays in tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from app.cli import main
from app.config import ModelConfig
from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState
from app.model import build_model
from app import checkpoint as ckpt
from tests.conftest import penguins_tree


pytestmark = pytest.mark.usefixtures("ray_must_not_start")  # (tests/conftest.py)


def write_config(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def assert_bad_input(args: list[str], capsys, *fragments: str) -> None:
    """`python -m app ARGS` exits 2 with one `error:` line holding every fragment, no traceback."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in err


@pytest.fixture
def checkpoint(tmp_path):
    """A real (untrained) checkpoint of a model reading columns a (numeric) and c (categorical)."""
    state = PreprocessState(label="y", task="classification", numeric=[NumericColumn("a", 0.0, 1.0, False)],
                            categorical=[CategoricalColumn("c", ["p", "q"])], classes=["n", "y"],
                            input_types={"a": "double", "c": "string"})
    cfg = ModelConfig(kind="mlp", hidden=[4])
    model = build_model(cfg, state)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    return ckpt.write_checkpoint(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, state=state,
                                 model_cfg=cfg, train_state={"epoch": 1, "progress": {}})


# ---------------------------------------------------------------- train


def test_empty_file(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(tmp_path / "empty.csv")))
    assert_bad_input(["train", "--config", str(cfg)], capsys, "data.train", "empty.csv is empty")


def test_absent_label_column(tmp_path, capsys):
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__label="kind"))
    assert_bad_input(["train", "--config", str(cfg)], capsys, "data.label", "'kind' is not in")


def test_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {train: a.csv\n")
    assert_bad_input(["train", "--config", str(path)], capsys, "bad.yaml", "malformed YAML")


def test_unknown_config_key(tmp_path, capsys):
    cfg = write_config(tmp_path, penguins_tree(tmp_path))
    assert_bad_input(["train", "--config", str(cfg), "--set", "train.epochz=3"], capsys,
                     "train.epochz", "unknown key")


def test_storage_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = write_config(tmp_path, penguins_tree(tmp_path, run__storage=str(blocker / "runs")))
    assert_bad_input(["train", "--config", str(cfg)], capsys, "run.storage", "cannot write")


# ---------------------------------------------------------------- tune


@pytest.mark.parametrize("space, fragment", [
    ({}, "tune.space: empty"),
    ({"train.lrr": {"choice": [0.1]}}, "tune.space.train.lrr: train.lrr is not a config key"),
    ({"train.lr": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
])
def test_bad_space(tmp_path, capsys, space, fragment):
    tree = penguins_tree(tmp_path, name="sweep", train__epochs=3, train__early_stopping_patience=None,
                         scaling__num_workers=1, scaling__cpus_per_worker=0.5, model__kind="mlp")
    tree["tune"] = {"num_samples": 4, "max_concurrent_trials": 2, "scheduler": {"name": "fifo"}, "space": space}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert_bad_input(["tune", "--config", str(path)], capsys, fragment)


# ---------------------------------------------------------------- predict / evaluate / report / export / baseline


def test_predict_input_without_a_feature_column(tmp_path, capsys, checkpoint):
    pd.DataFrame({"a": [1.0, 2.0], "other": [1, 2]}).to_csv(tmp_path / "in.csv", index=False)
    assert_bad_input(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "out.csv")], capsys, "--input", "missing feature column(s) c")
    assert not (tmp_path / "out.csv").exists()


def test_predict_will_not_overwrite_by_default(tmp_path, capsys, checkpoint):
    pd.DataFrame({"a": [1.0], "c": ["p"]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out.csv").write_text("keep me")
    assert_bad_input(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "out.csv")], capsys, "--output", "already exists", "--overwrite")
    assert (tmp_path / "out.csv").read_text() == "keep me"


def test_predict_from_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    pd.DataFrame({"a": [1.0], "c": ["p"]}).to_csv(tmp_path / "in.csv", index=False)
    assert_bad_input(["predict", "--checkpoint", str(tmp_path), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "out.csv")], capsys, "--checkpoint", "manifest.json")


def test_evaluate_needs_the_label_column(tmp_path, capsys, checkpoint):
    pd.DataFrame({"a": [1.0], "c": ["p"]}).to_csv(tmp_path / "in.csv", index=False)
    assert_bad_input(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "in.csv")], capsys,
                     "--data", "no label column 'y'")


def test_evaluate_missing_data(tmp_path, capsys, checkpoint):
    assert_bad_input(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nope.csv")], capsys,
                     "--data", "does not exist")


def test_report_of_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert_bad_input(["report", str(tmp_path / "run")], capsys, "RUN_DIR", "no metrics.json")
    assert not (tmp_path / "run" / "report.html").exists()


def test_export_into_a_non_empty_folder(tmp_path, capsys, checkpoint):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    assert_bad_input(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")], capsys,
                     "--output", "not empty")


def test_baseline_with_a_bad_config_key(tmp_path, capsys):
    path = write_config(tmp_path, penguins_tree(tmp_path, report__baseline_rows=5))
    assert_bad_input(["baseline", "--config", str(path)], capsys, "report.baseline_rows", "unknown key")


# ---------------------------------------------------------------- serve


def test_serve_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert_bad_input(["serve", "--checkpoint", str(tmp_path)], capsys, "--checkpoint", "manifest.json")
