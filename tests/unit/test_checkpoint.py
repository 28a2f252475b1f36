"""Checkpoint format: written and uploaded manifest-last, refused when incomplete or corrupt."""

import json

import pyarrow.fs as pafs
import pytest
import torch

from app.config import ModelConfig
from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState
from app.errors import UserError
from app.model import build_model
from app.predictor import Predictor
from app.training import checkpoint as ckpt
from app.training import faults


class Stop(Exception):
    pass


def state():
    return PreprocessState(label="y", task="classification", numeric=[NumericColumn("a", 0.0, 1.0, True)],
                           categorical=[CategoricalColumn("c", ["p", "q"])], classes=["n", "y"],
                           input_types={"a": "double", "c": "string"})


@pytest.fixture
def written(tmp_path):
    s = state()
    cfg = ModelConfig(kind="mlp", hidden=[4])
    model = build_model(cfg, s)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    return ckpt.write_checkpoint(tmp_path / "local", model=model, optimizer=opt, scheduler=sched, state=s,
                                 model_cfg=cfg, train_state={"epoch": 3, "progress": {}}), model


def test_round_trip_without_pickle(written):
    directory, model = written
    manifest = ckpt.verify(directory)
    assert manifest["epoch"] == 3 and set(manifest["sha256"]) == set(ckpt.FILES)
    predictor = Predictor.from_checkpoint(directory)
    for name, tensor in model.state_dict().items():
        assert torch.equal(predictor.model.state_dict()[name], tensor)
    assert predictor.state == state()
    assert set(ckpt.load_optimizer_state(directory)) == {"optimizer", "scheduler"}  # weights_only load


def test_upload_cut_short_leaves_nothing_that_loads(written, tmp_path):
    directory, _ = written
    fs = pafs.LocalFileSystem()
    dest = str(tmp_path / "storage" / "checkpoint_epoch_0003")

    def crash():
        raise Stop

    with pytest.raises(Stop):
        ckpt.upload(directory, fs, dest, after_first_file=crash)
    assert (tmp_path / "storage" / "checkpoint_epoch_0003" / "model.pt").exists()
    with pytest.raises(UserError, match=r"checkpoint .*checkpoint_epoch_0003: no manifest.json"):
        Predictor.from_checkpoint(dest)
    ckpt.upload(directory, fs, dest)  # a retry of the same epoch completes it
    assert ckpt.verify(dest)["epoch"] == 3


def test_corrupt_or_missing_files_are_refused(written):
    directory, _ = written
    data = bytearray((directory / "model.pt").read_bytes())
    data[-10] ^= 0xFF
    (directory / "model.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model.pt is corrupt"):
        ckpt.verify(directory)
    (directory / "model.pt").unlink()
    with pytest.raises(UserError, match=r"model.pt is missing"):
        ckpt.verify(directory)


def test_stale_manifest_of_an_earlier_attempt_is_removed_first(written, tmp_path):
    directory, _ = written
    fs = pafs.LocalFileSystem()
    dest = str(tmp_path / "storage" / "ck")
    ckpt.upload(directory, fs, dest)
    with pytest.raises(Stop):
        ckpt.upload(directory, fs, dest, after_first_file=lambda: (_ for _ in ()).throw(Stop()))
    assert not (tmp_path / "storage" / "ck" / "manifest.json").exists()


def test_weights_that_do_not_fit_the_model_config_are_refused(written):
    directory, _ = written
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["model"]["hidden"] = [7]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="weights do not fit its model config"):
        Predictor.from_checkpoint(directory)


def test_fault_spec_parsing():
    assert faults.parse("rank=1,epoch=3,step=10") == faults.Fault(rank=1, epoch=3, step=10)
    assert faults.parse("epoch=2,at=upload") == faults.Fault(rank=0, epoch=2, at="upload")
    assert faults.parse("") is None
    for bad in ("rank=1", "epoch=x", "epoch=2,at=moon", "epoch=2,color=red"):
        with pytest.raises(UserError, match="APP_FAULT"):
            faults.parse(bad)


def test_checkpoints_from_before_model_kinds_still_load():
    """Version 1 of the preprocessing state (standard scaling, no bins) and a manifest
    without model.kind: an mlp."""
    legacy = json.loads(state().to_json())
    for key in ("quantile_normal", "bins"):
        legacy.pop(key)
    for column in legacy["numeric"]:
        column.pop("quantiles")
    legacy["version"] = 1
    loaded = PreprocessState.from_json(json.dumps(legacy))
    assert loaded.numeric[0].quantiles is None and loaded.bins == []
    assert ckpt.model_config({"model": {"hidden": [4], "dropout": 0.1}}).kind == "mlp"
    assert ckpt.model_config({"model": {"kind": "tabm"}}).kind == "tabm"
