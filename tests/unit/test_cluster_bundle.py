"""What each training worker asks Ray for, and how many fit the cluster's nodes. No Ray."""

import pytest

from app.cluster import fits_per_node, groups_that_fit, worker_bundle, worker_capacity
from app.config import ScalingConfig
from app.errors import UserError


def test_a_worker_memory_budget_is_requested_from_ray_in_bytes():
    assert worker_bundle(ScalingConfig(cpus_per_worker=2)) == {"CPU": 2.0}
    bundle = worker_bundle(ScalingConfig(cpus_per_worker=1, memory_per_worker_mb=512, resources_per_worker={"w": 1}))
    assert bundle == {"CPU": 1.0, "w": 1, "memory": 512 * 2**20}


# ---------------------------------------------------------------- workers and trials per node


def test_a_tenth_of_a_cpu_fits_ten_times_in_one():
    # 1.0 // 0.1 is 9.0 in floating point; Ray counts resources in 1/10000 units, so 10 fit.
    assert fits_per_node([{"CPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}], {"CPU": 0.1}) == [10, 20]
    assert fits_per_node([{"CPU": 8.0}, {"CPU": 8.0, "w": 1.0}], {"CPU": 1.0, "w": 1.0}) == [0, 1]


def test_one_group_fits_exactly_when_the_capacity_holds_it():
    for strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        for fits in ([], [0], [3], [2, 2], [4, 1, 0], [1, 1, 1]):
            for size in (1, 2, 3, 4, 5):
                assert (groups_that_fit(fits, size, strategy) >= 1) == (worker_capacity(fits, strategy) >= size)


def test_trials_side_by_side_follow_the_placement_strategy():
    fits = [3, 3]  # two nodes, room for three workers each; trials of two workers
    assert groups_that_fit(fits, 2, "PACK") == 3  # one trial split over both nodes
    assert groups_that_fit(fits, 2, "STRICT_PACK") == 2  # each trial on one node
    assert groups_that_fit(fits, 2, "STRICT_SPREAD") == 3  # each trial one worker per node
    assert groups_that_fit([5, 1], 2, "STRICT_SPREAD") == 1  # one node cannot hold both halves


def test_a_sweep_counts_trials_as_train_counts_workers(monkeypatch, tmp_path):
    """`tune` asks cluster for its trials: 0.1 CPU per worker on a 1-CPU node is 10 workers
    (five trials of two), not the 9 of floating-point division."""
    import ray

    from app.config import from_dict
    from app.tuning import trial_concurrency
    from tests.conftest import penguins_tree

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 1.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])
    tree = penguins_tree(tmp_path)
    tree["scaling"] = {"num_workers": 2, "cpus_per_worker": 0.1}
    tree["tune"] = {"max_concurrent_trials": 16}
    assert trial_concurrency(from_dict(tree, "test")) == 5
    tree["scaling"]["placement_strategy"] = "STRICT_SPREAD"  # two workers on two nodes: there is one
    with pytest.raises(UserError, match="one trial needs 2 worker.*placement STRICT_SPREAD"):
        trial_concurrency(from_dict(tree, "test"))
