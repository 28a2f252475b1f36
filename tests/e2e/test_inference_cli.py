"""predict / evaluate / report / export / baseline from the real CLI: bad input exits 2
with one line naming the problem, before Ray starts."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from app.config import ModelConfig
from app.data.preprocess import CategoricalColumn, NumericColumn, PreprocessState
from app.model import build_model
from app.training import checkpoint as ckpt
from tests.conftest import penguins_tree
from tests.e2e.test_cli import assert_bad_input, run_cli, write_config

pytestmark = pytest.mark.slow


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


def test_predict_input_without_a_feature_column(tmp_path, cli_env, checkpoint):
    pd.DataFrame({"a": [1.0, 2.0], "other": [1, 2]}).to_csv(tmp_path / "in.csv", index=False)
    result = run_cli(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "out.csv")], cli_env)
    assert_bad_input(result, "--input", "missing feature column(s) c")
    assert not (tmp_path / "out.csv").exists()


def test_predict_will_not_overwrite_by_default(tmp_path, cli_env, checkpoint):
    pd.DataFrame({"a": [1.0], "c": ["p"]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out.csv").write_text("keep me")
    result = run_cli(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "out.csv")], cli_env)
    assert_bad_input(result, "--output", "already exists", "--overwrite")
    assert (tmp_path / "out.csv").read_text() == "keep me"


def test_predict_from_a_folder_that_is_not_a_checkpoint(tmp_path, cli_env):
    pd.DataFrame({"a": [1.0], "c": ["p"]}).to_csv(tmp_path / "in.csv", index=False)
    result = run_cli(["predict", "--checkpoint", str(tmp_path), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "out.csv")], cli_env)
    assert_bad_input(result, "--checkpoint", "manifest.json")


def test_evaluate_needs_the_label_column(tmp_path, cli_env, checkpoint):
    pd.DataFrame({"a": [1.0], "c": ["p"]}).to_csv(tmp_path / "in.csv", index=False)
    result = run_cli(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "in.csv")], cli_env)
    assert_bad_input(result, "--data", "no label column 'y'")


def test_evaluate_missing_data(tmp_path, cli_env, checkpoint):
    result = run_cli(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nope.csv")], cli_env)
    assert_bad_input(result, "--data", "does not exist")


def test_report_of_an_unfinished_run(tmp_path, cli_env):
    (tmp_path / "run").mkdir()
    result = run_cli(["report", str(tmp_path / "run")], cli_env)
    assert_bad_input(result, "RUN_DIR", "no metrics.json")
    assert not (tmp_path / "run" / "report.html").exists()


def test_export_into_a_non_empty_folder(tmp_path, cli_env, checkpoint):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    result = run_cli(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")], cli_env)
    assert_bad_input(result, "--output", "not empty")


def test_baseline_with_a_bad_config_key(tmp_path, cli_env):
    path = write_config(tmp_path, penguins_tree(tmp_path, report__baseline_rows=5))
    result = run_cli(["baseline", "--config", str(path)], cli_env)
    assert_bad_input(result, "report.baseline_rows", "unknown key")
