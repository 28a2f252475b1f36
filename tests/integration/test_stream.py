"""`data.cache` on one shared local Ray: a worker whose shard is larger than the memory
budget set here streams it (auto) in flat memory and trains as well as one that holds its
shard in memory; a streamed run killed mid-epoch resumes exactly where an uninterrupted one
goes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import app
from app.config import from_dict
from app.data.shards import bounded_blocks
from tests.conftest import NO_TRACKING, make_synthetic
from tests.drills import hung_pid, registered_epoch, train_in_background, wait_for

# One worker, whose shard of train + valid (90% of the rows) is about 100 MiB of model-ready
# arrays: three times the budget below, and well over what a worker's private memory grows
# by whatever it reads (measured: 30-40 MiB for Ray Data's iterator, torch's first steps,
# validation and checkpoints, and a streaming worker's buffer of an eighth of its budget).
LARGE_ROWS = 1_200_000
BUDGET_MB = 32


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("large"), LARGE_ROWS)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("small"), 200_000)


def synthetic_config(data: Path, storage: Path, name: str, *, cache: str = "auto", epochs: int = 1,
                     workers: int = 1, max_failures: int = 0):
    tree = {
        "name": name,
        "data": {"train": str(data), "label": "target", "cache": cache, "split": {"valid": 0.1, "test": 0.1}},
        "model": {"kind": "mlp", "hidden": [64, 64], "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 2048, "lr": 3.0e-3, "early_stopping_patience": None},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1, "memory_per_worker_mb": BUDGET_MB},
        "run": {"storage": str(storage), "max_failures": max_failures},
        "tracking": NO_TRACKING,
    }
    return from_dict(tree, "test")


@pytest.fixture(scope="module")
def memory_run(ray_session, large, tmp_path_factory):
    return app.train(synthetic_config(large, tmp_path_factory.mktemp("memory"), "memory", cache="memory")).metrics


@pytest.fixture(scope="module")
def auto_run(ray_session, large, tmp_path_factory):
    return app.train(synthetic_config(large, tmp_path_factory.mktemp("auto"), "auto")).metrics


def majority_share(metrics) -> float:
    matrix = metrics["test_details"]["confusion_matrix"]["matrix"]
    return max(sum(row) for row in matrix) / sum(map(sum, matrix))


@pytest.mark.slow  # two runs on 1.2M rows (shared with the next test)
def test_a_shard_over_the_budget_streams_in_flat_memory(memory_run, auto_run):
    (streamed,) = auto_run["attempts"]
    (held,) = memory_run["attempts"]
    assert streamed["data_cache"] == "stream" and "is over half of its 32 MiB budget" in streamed["data_cache_reason"]
    assert held["data_cache"] == "memory" and held["data_cache_reason"] == "data.cache"
    shard_mb = streamed["data_shard_mb"]
    assert shard_mb > 2 * BUDGET_MB and held["data_shard_mb"] == shard_mb
    # Holding the shard shows in private memory: the measure sees it ...
    assert held["worker_private_growth_mb"] > shard_mb
    # ... and a streaming worker grows by what any worker does, not by its shard. (Alone,
    # +33 MiB streamed against +129 MiB held for a 99 MiB shard; in the full suite, with the
    # shared Ray busy, the fixed part has reached +88 MiB once; why is not pinned down yet.)
    growth = (held["worker_private_growth_mb"], streamed["worker_private_growth_mb"])
    assert growth[1] < 0.95 * shard_mb, growth
    assert growth[0] - growth[1] > 0.3 * shard_mb, growth
    print(f"\nshard {shard_mb:.1f} MiB: private memory +{held['worker_private_growth_mb']:.1f} MiB held, "
          f"+{streamed['worker_private_growth_mb']:.1f} MiB streamed; epoch rows/s "
          f"{memory_run['history'][0]['rows_per_s']:,.0f} held, {auto_run['history'][0]['rows_per_s']:,.0f} streamed")


@pytest.mark.slow  # the same two runs
def test_streamed_training_matches_memory_mode(memory_run, auto_run):
    for metrics in (memory_run, auto_run):
        assert metrics["test"]["accuracy"] > majority_share(metrics) + 0.2
    assert auto_run["test"]["accuracy"] == pytest.approx(memory_run["test"]["accuracy"], abs=0.02)
    assert auto_run["valid"]["valid_loss"] == pytest.approx(memory_run["valid"]["valid_loss"], rel=0.05)
    assert auto_run["rows"] == memory_run["rows"]


@pytest.mark.slow  # two runs and a restart
def test_a_streamed_run_killed_mid_epoch_resumes_exactly(ray_session, small, tmp_path, monkeypatch):
    # Two ranks; each one's shuffle buffer (4 MiB) holds about half of its training shard.
    # Rank 1 stops at step 20 of epoch 2, once epoch 1's checkpoint is registered, and is
    # killed there.
    def config(name, **kwargs):
        return synthetic_config(small, tmp_path, name, cache="stream", epochs=2, workers=2, **kwargs)

    clean = app.train(config("clean")).metrics
    hang = "rank=1,epoch=2,step=20,then=hang"
    monkeypatch.setenv("APP_FAULT", hang)
    run = str(tmp_path / "killed")
    thread, outcome = train_in_background(config("killed", max_failures=1))
    assert wait_for(lambda: (hung_pid(run, hang) and registered_epoch(run) == 1) or not thread.is_alive())
    assert thread.is_alive(), outcome.get("error")
    os.kill(hung_pid(run, hang), signal.SIGKILL)
    thread.join(timeout=600)
    killed = outcome["metrics"]
    first, again = killed["attempts"]
    assert (first["from_epoch"], again["from_epoch"]) == (0, 1)  # epoch 2 replayed after the restart
    assert again["data_cache"] == "stream"
    assert [r["epoch"] for r in killed["history"]] == [1, 2]
    assert killed["param_fingerprints"] == clean["param_fingerprints"]  # bit-identical weights
    assert killed["valid"] == clean["valid"]
    assert killed["test"] == clean["test"]


def test_large_blocks_are_recut_near_equal_and_in_order(ray_session):
    ds = ray_session.data.range(10_000, override_num_blocks=2).materialize()  # two blocks of 40 KB
    recut = bounded_blocks(ds, max_bytes=8_000)
    sizes = [m.size_bytes for bundle in recut.iter_internal_ref_bundles() for m in bundle.metadata]
    assert len(sizes) == 10 and max(sizes) <= 8_000
    assert [row["id"] for row in recut.iter_rows()] == list(range(10_000))
    assert bounded_blocks(recut, max_bytes=8_000) is recut  # small blocks: left as they are
