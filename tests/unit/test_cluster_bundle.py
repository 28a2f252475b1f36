"""What each training worker asks Ray for. No Ray."""

from app.cluster import worker_bundle
from app.config import ScalingConfig


def test_a_worker_memory_budget_is_requested_from_ray_in_bytes():
    assert worker_bundle(ScalingConfig(cpus_per_worker=2)) == {"CPU": 2.0}
    bundle = worker_bundle(ScalingConfig(cpus_per_worker=1, memory_per_worker_mb=512, resources_per_worker={"w": 1}))
    assert bundle == {"CPU": 1.0, "w": 1, "memory": 512 * 2**20}
