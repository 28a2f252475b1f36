"""Checkpoint format: written and uploaded manifest-last, refused when incomplete or corrupt; a
resume picks the newest intact checkpoint."""

import json

import pyarrow.fs as pafs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import ModelConfig
from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState
from app.errors import UserError
from app.model import build_model
from app.predictor import Predictor
from app import checkpoint as ckpt
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


# ---------------------------------------------------------------- choosing where to resume


def write_run(run, epochs, *, registered=True):
    """A run folder with a checkpoint per epoch and, if `registered`, Ray Train's record of
    them in the format Ray 2.60 writes (built with its own classes)."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState,
        _TrainingResultState,
    )

    s, cfg = state(), ModelConfig(kind="mlp", hidden=[4])
    model = build_model(cfg, s)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    results = []
    for epoch in epochs:
        ckpt.write_checkpoint(run / f"checkpoint_epoch_{epoch:04d}", model=model, optimizer=opt, scheduler=sched,
                              state=s, model_cfg=cfg, train_state={"epoch": epoch, "progress": {}})
        results.append(_TrainingResultState(checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
                                            metrics={"epoch": epoch, "valid_loss": 1.0 / epoch}))
    if registered:
        snapshot = _CheckpointManagerState(
            checkpoint_results=results, checkpoint_report_indices=[e - 1 for e in epochs],
            latest_checkpoint_result=results[-1], pending_training_results=[], pending_validation_specs=[],
            current_report_index=epochs[-1], validated_checkpoint_dir_names=[results[-1].checkpoint_dir_name],
            timed_out_validation_checkpoint_dir_names=[], failed_validation_checkpoint_dir_names=[])
        (run / "checkpoint_manager_snapshot.json").write_text(snapshot.model_dump_json())
    return run


def damage(folder, how):
    if how == "truncated":
        (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes()[:-100])
    elif how == "no manifest":
        (folder / "manifest.json").unlink()
    elif how == "missing":
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


REASONS = {"truncated": "model.pt is corrupt", "no manifest": "no manifest.json", "missing": "not a folder"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["intact", "truncated", "no manifest", "missing"]), min_size=1, max_size=4))
def test_newest_intact_is_the_newest_undamaged_checkpoint(conditions):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp), list(range(1, len(conditions) + 1)), registered=False)
        for epoch, how in enumerate(conditions, 1):
            damage(run / f"checkpoint_epoch_{epoch:04d}", how)
        newest_first = [str(run / f"checkpoint_epoch_{e:04d}") for e in range(len(conditions), 0, -1)]
        found, skipped = ckpt.newest_intact(newest_first)
        intact = [e for e, how in enumerate(conditions, 1) if how == "intact"]
        assert (found.manifest["epoch"] if found else None) == (max(intact) if intact else None)
        expected = [(e, how) for e, how in enumerate(conditions, 1) if e > (max(intact) if intact else 0)]
        assert len(skipped) == len(expected)
        for message, (epoch, how) in zip(skipped, sorted(expected, reverse=True)):
            assert f"checkpoint_epoch_{epoch:04d}" in message and REASONS[how] in message


def test_a_corrupt_latest_checkpoint_rolls_ray_trains_record_back(tmp_path, capsys):
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

    from app.training.resume import choose_checkpoint

    run = write_run(tmp_path, [1, 2, 3])
    record = run / "checkpoint_manager_snapshot.json"
    original = json.loads(record.read_text())
    damage(run / "checkpoint_epoch_0003", "truncated")
    found, registered = choose_checkpoint(str(run))
    assert (found.uri, found.manifest["epoch"], registered) == (str(run / "checkpoint_epoch_0002"), 2, True)
    warning = capsys.readouterr().err
    assert f"checkpoint {run / 'checkpoint_epoch_0003'}: model.pt is corrupt" in warning
    assert f"resuming from {run / 'checkpoint_epoch_0002'}" in warning

    rolled = _CheckpointManagerState.model_validate_json(record.read_text())  # as Ray Train reads it
    assert rolled.latest_checkpoint_result.checkpoint_dir_name == "checkpoint_epoch_0002"
    assert [r.checkpoint_dir_name for r in rolled.checkpoint_results] == ["checkpoint_epoch_0001",
                                                                           "checkpoint_epoch_0002"]
    assert rolled.checkpoint_report_indices == [0, 1] and rolled.current_report_index == 3
    assert rolled.validated_checkpoint_dir_names == []
    kept = list(run.glob("checkpoint_manager_snapshot.json.rolled-back-*"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == original  # nothing lost
    assert (run / "checkpoint_epoch_0003" / "model.pt").exists()  # left for the redone epoch to overwrite

    assert choose_checkpoint(str(run))[0].uri == found.uri  # the rolled-back record now names it
    assert capsys.readouterr().err == ""


def test_no_intact_registered_checkpoint_is_refused_and_nothing_is_changed(tmp_path):
    from app.training.resume import choose_checkpoint

    run = write_run(tmp_path, [1, 2])
    before = (run / "checkpoint_manager_snapshot.json").read_text()
    damage(run / "checkpoint_epoch_0002", "truncated")
    damage(run / "checkpoint_epoch_0001", "no manifest")
    with pytest.raises(UserError, match=r"no intact checkpoint to resume from \(checkpoint .*checkpoint_epoch_0002: "
                                        r"model.pt is corrupt.*; checkpoint .*checkpoint_epoch_0001: no manifest"):
        choose_checkpoint(str(run))
    assert (run / "checkpoint_manager_snapshot.json").read_text() == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_epoch_0001", "checkpoint_epoch_0002",
                                                     "checkpoint_manager_snapshot.json"]


def test_without_a_readable_record_the_newest_intact_folder_is_chosen(tmp_path, capsys):
    from app.training.resume import choose_checkpoint

    assert choose_checkpoint(str(tmp_path)) is None  # a new run
    run = write_run(tmp_path, [1, 2, 3])
    (run / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_res')  # cut short by a killed driver
    damage(run / "checkpoint_epoch_0003", "no manifest")
    found, registered = choose_checkpoint(str(run))
    assert (found.manifest["epoch"], registered) == (2, False)  # Ray Train has no record: the loop config names it
    err = capsys.readouterr().err
    assert "was cut short" in err and "checkpoint_epoch_0003: no manifest.json" in err
    assert not (run / "checkpoint_manager_snapshot.json").exists()
    assert len(list(run.glob("checkpoint_manager_snapshot.json.cut-short-*"))) == 1
    damage(run / "checkpoint_epoch_0002", "truncated")
    damage(run / "checkpoint_epoch_0001", "truncated")
    assert choose_checkpoint(str(run)) is None  # unregistered folders, none intact: a fresh start
    assert "3 checkpoint(s) skipped, starting over" in capsys.readouterr().err
