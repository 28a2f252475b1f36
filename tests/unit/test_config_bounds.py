"""Configs stay bounded: YAML anchors and aliases are refused, messages quote at most an
excerpt of a bad value, `name` fits a folder name, and every command checks `tune.space`."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

import app
from app.cli import main
from app.config import from_dict, load_config
from app.errors import UserError

pytestmark = pytest.mark.usefixtures("ray_must_not_start")  # (tests/conftest.py)

MINIMAL = {"name": "t", "data": {"train": "x.csv", "label": "y"}}
BOMB = """\
name: t
data: {train: x.csv, label: y}
tune:
  space:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: {choice: [*e, *e, *e, *e, *e, *e, *e, *e, *e]}
"""


def write(tmp_path, tree, name="config.yaml"):
    path = tmp_path / name
    path.write_text(tree if isinstance(tree, str) else yaml.safe_dump(tree))
    return path


def one_error_line(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
    return err


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys):
    path = write(tmp_path, BOMB)
    err = one_error_line(["train", "--config", str(path)], capsys)
    assert err == f"error: {path}: YAML anchors and aliases (&/*) are not supported (line 5)\n"


@pytest.mark.parametrize("text", [
    "name: t\ndata: &d {train: x.csv, label: y}\n",  # an anchor alone
    "name: t\nbase: &b {train: x.csv, label: y}\ndata:\n  <<: *b\n",  # a merge key
])
def test_anchors_and_merge_keys_are_refused(tmp_path, text):
    with pytest.raises(UserError, match=r"config.yaml: YAML anchors and aliases \(&/\*\) are not supported"):
        load_config(write(tmp_path, text))


def test_an_alias_in_a_set_value_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"^--set model.hidden: YAML anchors and aliases \(&/\*\) are not supported"):
        load_config(write(tmp_path, MINIMAL), ["model.hidden=[&w 8, *w]"])


def test_a_value_used_twice_is_written_without_aliases(tmp_path):
    shared = ["a", "b"]
    cfg = from_dict({"name": "t", "data": {"train": "x.csv", "label": "y", "categorical": shared, "drop": shared}},
                    "config")
    assert "&" not in cfg.to_yaml() and "*" not in cfg.to_yaml()
    assert load_config(write(tmp_path, cfg.to_yaml())) == cfg


@pytest.mark.parametrize("override", [
    "train.epochs=" + "x" * 100_000,
    "model.hidden=[" + ", ".join(["-1"] * 20_000) + "]",
    "data.train=[" + ", ".join(["1"] * 20_000) + "]",
    "train.lr=" + "9" * 4000,  # a number quoted by pydantic's message
    "data.split.seed=[" + "[" * 50 + "1" + "]" * 50 + "]",
    "tune.space={train.lr: {choice: [[" + ", ".join(["-1"] * 20_000) + "]]}}",
    "tune.space={train.lr: {uniform: [" + ", ".join(["1"] * 20_000) + "]}}",
    "tune.space={" + "k" * 5000 + ": {choice: [1]}}",
])
def test_messages_quote_a_bounded_excerpt(tmp_path, override):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, MINIMAL), [override])
    assert len(str(e.value)) < 300 + 2 * 200, str(e.value)[:1000]
    assert "..." in str(e.value)


def test_a_name_too_long_for_a_folder_is_refused_by_key(tmp_path):
    assert load_config(write(tmp_path, MINIMAL), [f"name={'a' * 100}"]).name == "a" * 100
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, MINIMAL), [f"name={'a' * 300}"])
    assert str(e.value) == f"{tmp_path / 'config.yaml'}: name (from --set): must be at most 100 characters (got 300)"


BAD_SPACE = dict(MINIMAL, tune={"space": {"train.lr": {"uniform": [0.1, -1.0]}}})


@pytest.mark.parametrize("command", ["train", "baseline", "tune"])
def test_every_command_refuses_a_bad_tune_space(tmp_path, capsys, command):
    path = write(tmp_path, BAD_SPACE)
    err = one_error_line([command, "--config", str(path)], capsys)
    assert err == f"error: {path}: tune.space.train.lr: uniform needs low < high, got [0.1, -1.0]\n"


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"choice": [0.1]}}, "config: tune.space.train.lrr: train.lrr is not a config key"),
    ({"run.storage": {"choice": ["a"]}}, "config: tune.space.run.storage: run.storage cannot be searched"),
    ({"model.dropout": {"choice": [0.1, 1.5]}}, "config: tune.space.model.dropout: 1.5 is not a valid model.dropout"),
])
def test_the_python_api_refuses_a_bad_tune_space_before_training(space, message):
    with pytest.raises(UserError) as e:
        app.train(dict(MINIMAL, tune={"space": space}))
    assert str(e.value).startswith(message), str(e.value)


def test_a_good_space_beside_a_dataframe_passes_and_keeps_the_frame():
    frame = pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]})
    cfg = from_dict({"name": "t", "data": {"train": frame, "label": "y"},
                     "tune": {"space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                                        "data.split.valid": {"choice": [0.1, 0.2]}}}}, "config")
    assert cfg.data.train is frame
    with pytest.raises(UserError, match=r"tune.space.data.split.valid: 0.9 is not a valid data.split.valid "
                                         r"\(valid \+ test must be below 1"):
        from_dict({"name": "t", "data": {"train": frame, "label": "y"},
                   "tune": {"space": {"data.split.valid": {"choice": [0.1, 0.9]}}}}, "config")
