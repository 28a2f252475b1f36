"""Training on one shared local Ray: shards, DDP consistency, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import app
from app.config import from_dict
from app.errors import UserError
from tests.conftest import REPO, penguins_tree


@pytest.fixture(scope="module")
def two_worker_run(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-workers")
    cfg = from_dict(penguins_tree(tmp, name="ddp", scaling__num_workers=2, train__epochs=4,
                                  train__early_stopping_patience=None), "test")
    return cfg, app.train(cfg).metrics


def test_run_leaves_config_metrics_and_checkpoints(two_worker_run):
    cfg, metrics = two_worker_run
    run = Path(cfg.run.storage) / cfg.name
    assert (run / "config.yaml").exists() and (run / "metrics.json").exists()
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["epochs_completed"] == 4
    assert [r["epoch"] for r in on_disk["history"]] == [1, 2, 3, 4]
    assert on_disk["history"][-1]["train_loss"] < on_disk["history"][0]["train_loss"]
    for split in ("valid", "test"):
        assert 0.0 <= on_disk[split]["accuracy"] <= 1.0
        assert on_disk[split]["log_loss"] > 0
    checkpoints = sorted(p.name for p in run.glob("checkpoint_epoch_*"))
    best = on_disk["best_checkpoint"].rsplit("/", 1)[1]
    # keep=2 best by valid_loss, plus always the latest
    assert best in checkpoints and "checkpoint_epoch_0004" in checkpoints and len(checkpoints) <= 3


def test_metrics_say_where_the_time_went(two_worker_run):
    _, metrics = two_worker_run
    (attempt,) = metrics["attempts"]  # one worker-group start, no restart
    assert attempt["world_size"] == 2 and attempt["from_epoch"] == 0
    assert attempt["ingest_rows"] == metrics["rows"]["train"] + metrics["rows"]["valid"]
    assert attempt["ingest_s"] > 0 and attempt["ready"] >= attempt["started"]
    t = metrics["timings"]
    assert t["ray_start_s"] is None  # the test connected to Ray itself
    for key in ("data_s", "worker_start_s", "ingest_s", "train_s", "test_s"):
        assert t[key] > 0, key
    steps = sum(r["epoch_time_s"] for r in metrics["history"])
    assert t["train_steps_s"] == pytest.approx(steps) and steps < t["train_s"]
    assert sum(t[k] for k in ("data_s", "worker_start_s", "train_s", "test_s")) <= metrics["wall_time_s"] + 1e-6
    for record in metrics["history"]:
        assert 0 < record["batch_wait_frac"] < 1
        assert record["worker_peak_rss_mb"] > 50  # a process with torch loaded


def test_parameters_are_identical_on_every_rank(two_worker_run):
    _, metrics = two_worker_run
    prints = metrics["param_fingerprints"]
    assert metrics["num_workers"] == 2 and len(prints) == 2
    assert prints[0] == prints[1]


def test_checkpoint_reproduces_validation_metrics_in_a_fresh_process(two_worker_run):
    cfg, metrics = two_worker_run
    script = textwrap.dedent(f"""
        import json
        from app.data import sources
        from app.data.split import VALID, assign_split
        from app.predictor import Predictor

        import pyarrow.csv as pacsv
        src = sources.resolve({cfg.data.train!r}, "data.train")
        df = pacsv.read_csv(src.paths[0]).to_pandas()  # as pyarrow infers types: the split must not care
        df = df[assign_split(df, {cfg.data.split.valid}, {cfg.data.split.test}, {cfg.data.split.seed}) == VALID]
        predictor = Predictor.from_checkpoint({metrics["best_checkpoint"]!r})
        calibrated = predictor.evaluate(df)
        predictor.temperature = 1.0  # the network as training validated it, before calibration
        print(json.dumps([predictor.evaluate(df), calibrated]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    fresh, calibrated = json.loads(out.stdout.strip().splitlines()[-1])
    reported = metrics["valid"]
    assert fresh["loss"] == pytest.approx(reported["valid_loss"], rel=1e-5)
    for key in ("accuracy", "f1_macro", "roc_auc", "log_loss"):
        assert fresh[key] == pytest.approx(reported[key], rel=1e-5), key
    after = metrics["calibration"]["valid"]["after"]
    assert calibrated["log_loss"] == pytest.approx(after["log_loss"], rel=1e-5)
    assert calibrated["log_loss"] <= fresh["log_loss"] and calibrated["accuracy"] == fresh["accuracy"]


def _record_shard_rows(config):
    """Train-loop stand-in: what rows does each rank see in each epoch?"""
    import ray.train
    import torch

    from app.training.loop import epoch_batches, load_shard, plan_epoch, shard_handle

    rank = ray.train.get_context().get_world_rank()
    shard = load_shard(shard_handle("train"), torch.device("cpu"))
    steps, total = plan_epoch(len(shard), config["batch_size"])
    for epoch in (1, 2):
        batches = epoch_batches(len(shard), steps, 0, epoch, rank)
        rows = torch.cat([shard.y[idx] for idx in batches]).tolist()
        with open(f"{config['out']}/rank{rank}-epoch{epoch}.json", "w") as f:
            json.dump({"rows": rows, "steps": len(batches), "total": total}, f)
        ray.train.report({"epoch": epoch})


def test_shards_are_disjoint_and_cover_the_split_once_per_epoch(ray_session, tmp_path):
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from app.data.shards import PresplitShards

    n = 1001
    ds = ray.data.range(n, override_num_blocks=7).map_batches(
        lambda b: {"x_num": np.zeros((len(b["id"]), 1), np.float32),
                   "x_cat": np.zeros((len(b["id"]), 0), np.int64), "y": b["id"]}).materialize()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    TorchTrainer(
        _record_shard_rows,
        train_loop_config={"batch_size": 64, "out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "runs"), name="shards"),
        datasets={"train": ds},
        dataset_config=PresplitShards({"train": ds}, range(2, 3)),
    ).fit()

    seen = {(r, e): json.loads((tmp_path / f"rank{r}-epoch{e}.json").read_text()) for r in (0, 1) for e in (1, 2)}
    for epoch in (1, 2):
        a, b = seen[0, epoch]["rows"], seen[1, epoch]["rows"]
        assert len(set(a)) == len(a) and len(set(b)) == len(b)  # each row once per rank
        assert not set(a) & set(b)  # disjoint
        assert sorted(a + b) == list(range(n))  # together: the whole split, once
        assert abs(len(a) - len(b)) <= 1
        assert seen[0, epoch]["steps"] == seen[1, epoch]["steps"] == 16  # ceil(1001 / 64), same on both
        assert seen[0, epoch]["total"] == n
    assert seen[0, 1]["rows"] != seen[0, 2]["rows"]  # reshuffled each epoch
    assert sorted(seen[0, 1]["rows"]) == sorted(seen[0, 2]["rows"])  # same shard every epoch


def test_a_small_input_trains_the_same_weights_without_ray_data(two_worker_run, tmp_path, monkeypatch):
    """A small input's shards come from the object store (`HeldShards`, no Ray Data job);
    prepared on Ray and read through Ray Data's shards instead, the run ends bit-identical."""
    from app.data import prepare as data_step

    cfg, held = two_worker_run
    monkeypatch.setattr(data_step, "SMALL_INPUT_BYTES", 0)
    on_ray = app.train(cfg.model_copy(update={"run": cfg.run.model_copy(update={"storage": str(tmp_path)})})).metrics
    assert held["attempts"][0]["data_shards"] == "held" and on_ray["attempts"][0]["data_shards"] == "ray_data"
    assert on_ray["rows"] == held["rows"]
    assert on_ray["param_fingerprints"] == held["param_fingerprints"]
    assert [r["train_loss"] for r in on_ray["history"]] == [r["train_loss"] for r in held["history"]]


def test_held_shards_cut_rows_as_ray_data_shards_do(ray_session, monkeypatch):
    """Rank r of W holds rows [n*r//W, n*(r+1)//W), as `shards.cut` cuts them, in blocks of at
    most MAX_BLOCK_BYTES."""
    from app.data import shards

    n = 1001
    rows = np.arange(n, dtype=np.int64)
    held = shards.HeldShards({"train": {"x_num": np.zeros((n, 3), np.float32), "x_cat": np.zeros((n, 0), np.int64),
                                        "y": rows}})
    for world_size in (1, 2, 3, 7):
        parts = [held.handle("train", rank, world_size) for rank in range(world_size)]
        got = [np.concatenate([b["y"] for b in p.blocks()]) for p in parts]
        assert np.array_equal(np.concatenate(got), rows)  # every row once, in order
        assert [len(g) for g in got] == [p.rows for p in parts] == [n * (r + 1) // world_size - n * r // world_size
                                                                    for r in range(world_size)]
        assert parts[0].size_bytes == parts[0].rows * (3 * 4 + 8)
    monkeypatch.setattr(shards, "MAX_BLOCK_BYTES", 100 * (3 * 4 + 8))  # 100 rows
    blocks = list(held.handle("train", 1, 2).blocks())
    assert [len(b["y"]) for b in blocks] == [100] * 5 + [1] and blocks[0]["y"][0] == n // 2
    assert not blocks[0]["x_num"].flags.writeable  # views of the object in shared memory, not copies


def test_impossible_worker_group_fails_fast(ray_session, tmp_path):
    cfg = from_dict(penguins_tree(tmp_path, name="too-big", scaling__num_workers=64), "test")
    with pytest.raises(UserError, match=r"scaling.num_workers: 64 worker\(s\) with 1 CPU each can never be scheduled"):
        app.train(cfg).metrics
    assert not (tmp_path / "runs" / "too-big" / "metrics.json").exists()
