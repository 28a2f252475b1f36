import pytest
import yaml

from app.config import Config, check_metric, load_config
from app.errors import UserError

MINIMAL = {"name": "t", "data": {"train": "x.csv", "label": "y"}}


def write(tmp_path, tree, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree) if not isinstance(tree, str) else tree)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, ["train.epochs=3", "model.hidden=[64, 32]", "scaling.num_workers=[1, 4]",
                             "data.split.seed=7"])
    assert cfg.train.epochs == 3
    assert cfg.model.hidden == [64, 32]
    assert (cfg.scaling.min_workers, cfg.scaling.max_workers) == (1, 4)
    assert cfg.data.split.seed == 7
    assert cfg.train.batch_size == "auto"  # default kept
    assert cfg.resolved(40_000).train.batch_size == 256 and cfg.resolved(40_000).train.epochs == 3
    assert cfg.resolved(1_000_000).train.batch_size == 1024
    assert cfg.run.checkpoint.metric == "valid_loss"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["train.lr=0.01"])
    again = load_config(write(tmp_path, cfg.to_yaml(), "resolved.yaml"))
    assert again == cfg


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "train.epoch (from --set): unknown key"),
    ("train.epochs=abc", "train.epochs (from --set): must be a positive integer or auto (got 'abc')"),
    ("train.epochs=0", "train.epochs (from --set): must be a positive integer or auto (got 0)"),
    ("train.lr=-0.1", "train.lr (from --set): Input should be greater than 0"),
    ("scaling.num_workers=[3, 1]", "scaling.num_workers (from --set): must be an integer or [min, max]"),
    ("data.split.valid=0.9", "data.split: valid + test must be below 1"),
    ("model.hidden=[]", "model.hidden (from --set): must be a non-empty list"),
    ("name=../escape", "name (from --set): must be letters"),
    ("scaling.placement_strategy=RANDOM", "scaling.placement_strategy (from --set): Input should be"),
])
def test_bad_values_name_the_key_and_file(tmp_path, override, fragment):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(UserError) as e:
        load_config(path, [override])
    assert str(e.value).startswith(f"{path}: ")
    assert fragment in str(e.value)


def test_unknown_key_in_file(tmp_path):
    tree = dict(MINIMAL, model={"hiden": [8]})
    path = write(tmp_path, tree)
    with pytest.raises(UserError, match=r"c.yaml: model.hiden: unknown key"):
        load_config(path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, {"name": "t", "data": {"train": "x.csv"}})
    with pytest.raises(UserError, match=r"data.label: required key is missing"):
        load_config(path)


def test_malformed_yaml(tmp_path):
    path = write(tmp_path, "name: t\ndata: [unclosed\n")
    with pytest.raises(UserError, match=r"c.yaml: malformed YAML"):
        load_config(path)


def test_strings_are_not_numbers(tmp_path):
    path = write(tmp_path, dict(MINIMAL, train={"epochs": "5"}))
    with pytest.raises(UserError, match=r"train.epochs: must be a positive integer or auto \(got '5'\)"):
        load_config(path)


def test_bad_override_syntax(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config(path, ["train.epochs"])
    with pytest.raises(UserError, match="train is not a section"):
        load_config(path, ["train=1", "train.epochs=2"])


def test_checkpoint_metric_must_be_reported_for_the_task():
    cfg = Config.model_validate(dict(MINIMAL, run={"checkpoint": {"metric": "rmse"}}))
    check_metric(cfg.run.checkpoint.metric, "regression", key="run.checkpoint.metric")
    with pytest.raises(UserError, match="run.checkpoint.metric: 'rmse' is never reported for classification"):
        check_metric(cfg.run.checkpoint.metric, "classification", key="run.checkpoint.metric")


def test_every_shipped_config_parses():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path)
        assert cfg.name


def test_scientific_notation_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "name: t\ndata: {train: x.csv, label: y}\ntrain: {lr: 3e-4}\n"),
                      ["train.weight_decay=1e-5"])
    assert cfg.train.lr == 3e-4 and cfg.train.weight_decay == 1e-5


def test_user_errors_are_found_inside_ray_train_failures():
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from app.errors import find_user_error

    inner = UserError("checkpoint x: model.pt is corrupt")
    wrapped = WorkerGroupError("training failed", {1: RuntimeError("other"), 0: inner})
    assert find_user_error(wrapped) is inner
    assert find_user_error(ControllerError(wrapped)) is inner
    assert find_user_error(WorkerGroupError("failed", {0: RuntimeError("bug")})) is None


def test_checkpoint_mode_follows_the_metric(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert load_config(path, ["run.checkpoint.metric=accuracy"]).run.checkpoint.mode == "max"
    assert load_config(path).run.checkpoint.mode == "min"
    with pytest.raises(UserError, match="mode 'min' would keep the worst checkpoints: r2 is better when higher"):
        load_config(path, ["run.checkpoint.metric=r2", "run.checkpoint.mode=min"])


def test_auto_epochs_and_batch_follow_the_training_rows(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert (cfg.train.epochs, cfg.train.batch_size) == ("auto", "auto")
    sizes = {rows: (c.train.epochs, c.train.batch_size) for rows in (700, 40_000, 150_000, 1_000_000)
             for c in [cfg.resolved(rows)]}
    assert sizes == {700: (200, 256), 40_000: (25, 256), 150_000: (10, 512), 1_000_000: (10, 1024)}
    assert cfg.train.epochs == "auto"  # resolved() returns a copy
    set_by_user = load_config(write(tmp_path, MINIMAL), ["train.epochs=3", "train.batch_size=64"])
    assert (set_by_user.resolved(1_000_000).train.epochs, set_by_user.resolved(1_000_000).train.batch_size) == (3, 64)


def test_dashboard_runs_for_large_inputs_unless_set(tmp_path, monkeypatch):
    from app import runner
    from app.config import from_dict
    from tests.conftest import penguins_tree

    cfg = from_dict(penguins_tree(tmp_path), "test")
    inputs = runner.preflight(cfg)
    assert cfg.run.dashboard == "auto" and not runner.wants_dashboard(cfg, inputs)  # 344 rows
    monkeypatch.setattr(runner, "SMALL_INPUT_BYTES", inputs.train.total_bytes - 1)
    assert runner.wants_dashboard(cfg, inputs)
    for value, wanted in (("false", False), ("true", True)):
        set_by_user = load_config(write(tmp_path, MINIMAL), [f"run.dashboard={value}"])
        assert runner.wants_dashboard(set_by_user, inputs) is wanted
    with pytest.raises(UserError, match="run.dashboard"):
        load_config(write(tmp_path, MINIMAL), ["run.dashboard=sometimes"])
