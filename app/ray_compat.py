"""Every use of an API of Ray (or of Python) that is not public, in one place: what each
touches, why we need it, and the versions it was checked against.

A Ray upgrade that moves one of these names fails `tests/unit/test_ray_compat.py`, which
resolves every entry of `INTERNALS` and names the one that moved; no other module of app/
may reach into Ray's private modules or call an underscore API (tests/unit/test_structure.py).
Public Ray APIs are used where they are needed, not here; so is `ray.init(_system_config=...)`
in app/cluster.py (Ray's own settings, through a keyword of its public `init`).

Checked against: Ray 2.60.0 (every entry, by tests/unit/test_ray_compat.py and the test
suite) and Ray 2.50.0 (the lowest release pyproject.toml allows, by reading its source: the
names are there, with the differences noted per entry; not run); CPython 3.11.

This module imports only the standard library at import time: a Ray worker that unpickles
one of our functions pays for nothing it does not call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer

# (module, attribute path, the oldest checked release that has it) of every non-public name
# used below: Ray 2.50.0 or 2.60.0 for Ray's (the two releases checked), CPython 3.11 for
# Python's (the one checked). tests/unit/test_ray_compat.py imports each module and resolves each path (an
# attribute of instances only is looked for in the class's __init__ or dataclass fields).
# The names only 2.60.0 has are ones whose absence costs a log line or a slower start.
CHECKED_RAY = "2.60.0"
INTERNALS: list[tuple[str, str, str]] = [
    # local_cluster_address / ray_address_file
    ("ray._private.utils", "read_ray_address", "2.50.0"),
    ("ray._private.utils", "get_ray_address_file", "2.50.0"),
    # the loggers named below (each module's `logger`)
    ("ray._private.authentication.authentication_token_setup", "logger", "2.60.0"),
    ("ray.data._internal.progress", "logger", "2.60.0"),
    ("ray.train.v2._internal.execution.context", "logger", "2.50.0"),
    # without_default_callbacks
    ("ray.train.v2.api.data_parallel_trainer", "DataParallelTrainer._create_default_callbacks", "2.50.0"),
    ("ray.train.v2._internal.callbacks.datasets", "DatasetsCallback", "2.60.0"),
    ("ray.train.v2._internal.callbacks.placement_group_callback", "PlacementGroupCleanerCallback", "2.60.0"),
    # run_storage
    ("ray.train.v2.api.context", "TrainContext.get_storage", "2.50.0"),
    ("ray.train.v2._internal.execution.storage", "StorageContext.storage_filesystem", "2.50.0"),
    ("ray.train.v2._internal.execution.storage", "StorageContext.experiment_fs_path", "2.50.0"),
    # block_sizes
    ("ray.data", "Dataset.iter_internal_ref_bundles", "2.50.0"),
    ("ray.data._internal.execution.interfaces.ref_bundle", "RefBundle.metadata", "2.50.0"),
    ("ray.data.block", "BlockMetadata.size_bytes", "2.50.0"),
    # serve_running, serve_details
    ("ray.serve.context", "_get_global_client", "2.50.0"),
    ("ray.serve._private.client", "ServeControllerClient.get_serve_details", "2.50.0"),
    # started_ray_here
    ("ray._private.worker", "_global_node", "2.50.0"),
    ("ray._private.node", "Node.head", "2.50.0"),
    # Ray Train's record of a run's checkpoints (runs.RAY_CHECKPOINTS, a JSON dump of this
    # pydantic model), which app/training/resume.py reads and rewrites to resume from an older
    # checkpoint: the fields it uses. In Ray 2.50.0 the model has only `checkpoint_results`
    # and `latest_checkpoint_result`; resume.py's roll-back needs the 2.60.0 fields.
    ("ray.train.v2._internal.execution.checkpoint.checkpoint_manager",
     "_CheckpointManagerState.checkpoint_results", "2.50.0"),
    ("ray.train.v2._internal.execution.checkpoint.checkpoint_manager",
     "_CheckpointManagerState.latest_checkpoint_result", "2.50.0"),
    ("ray.train.v2._internal.execution.checkpoint.checkpoint_manager",
     "_CheckpointManagerState.checkpoint_report_indices", "2.60.0"),
    ("ray.train.v2._internal.execution.checkpoint.checkpoint_manager",
     "_CheckpointManagerState.pending_training_results", "2.60.0"),
    ("ray.train.v2._internal.execution.checkpoint.checkpoint_manager",
     "_CheckpointManagerState.pending_validation_specs", "2.60.0"),
    ("ray.train.v2._internal.execution.checkpoint.checkpoint_manager",
     "_TrainingResultState.checkpoint_dir_name", "2.50.0"),
    ("ray.train.v2._internal.execution.checkpoint.checkpoint_manager", "_TrainingResultState.metrics", "2.50.0"),
    # tune_stop_seen: the function whose handler logs TUNE_STOP_WARNING
    ("ray.tune.tune", "_setup_signal_catching", "2.50.0"),
    # quick_exit
    ("threading", "_shutdown", "3.11"),
    ("atexit", "_run_exitfuncs", "3.11"),
    ("os", "_exit", "3.11"),
]


# ---------------------------------------------------------------- a `ray start` of this machine

def local_cluster_address() -> str | None:
    """The address of the last `ray start` (or test Cluster) of this machine, as recorded in
    <ray temp dir>/ray_current_cluster; None without one. For app/cluster.py
    `local_cluster_running`, which must tell a live one from a stale record before ray.init()
    follows it (Ray has no public API for the record). Ray 2.50.0 and 2.60.0 alike (the
    function lives in ray._common.utils and is re-exported by ray._private.utils)."""
    from ray._private.utils import read_ray_address

    return read_ray_address() or None


def ray_address_file() -> str:
    """The file `local_cluster_address` reads (deleted when its cluster is gone)."""
    from ray._private.utils import get_ray_address_file

    return get_ray_address_file(None)


# ---------------------------------------------------------------- Ray's own loggers
# app/cluster.py quiets these Ray loggers (they are named after Ray's private modules).

# Its notice, on a new local Ray, that token authentication is on by default. Ray 2.60.0;
# Ray 2.50.0 has no token authentication (setting the level of an unused logger is harmless).
AUTH_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
# Ray Data's one-time notice that a dataset runs without progress bars (our shards). Ray
# 2.60.0; in Ray 2.50.0 the module is ray.data._internal.progress_bar, and the name is unused.
DATA_PROGRESS_LOGGER = "ray.data._internal.progress"


# Ray Tune's warning when its own SIGINT/SIGUSR1 handler ends a sweep early (fit() then
# returns normally): the logger, and the words it starts with. Ray 2.50.0 and 2.60.0
# (ray/tune/tune.py `_setup_signal_catching`); tests/unit/test_ray_compat.py checks both.
TUNE_LOGGER = "ray.tune.tune"
TUNE_STOP_WARNING = "Stop signal received"


@contextmanager
def tune_stop_seen() -> Iterator[Callable[[], bool]]:
    """For the block: whether Ray Tune said that its stop handler ended the sweep (Tune has
    no public record of it; a Tuner.restore()d sweep does not even leave its handler in
    place to tell by). The warning is heard whatever the levels of Ray's loggers, and shown
    only where it would have been."""
    import logging

    seen: list[bool] = []

    class Heard(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(TUNE_STOP_WARNING):
                seen.append(True)

    logger = logging.getLogger(TUNE_LOGGER)
    heard = Heard(logging.WARNING)
    saved = logger.level, logger.propagate
    shown = logger.isEnabledFor(logging.WARNING)
    logger.addHandler(heard)
    logger.setLevel(logging.WARNING)
    logger.propagate = saved[1] and shown
    try:
        yield lambda: bool(seen)
    finally:
        logger.removeHandler(heard)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def train_report_logger() -> str:
    """The name of the logger with which Ray Train logs every report (all its metrics) at
    INFO: its module's file path (`logging.getLogger(__file__)`), Ray 2.50.0 and 2.60.0."""
    import ray.train.v2._internal.execution.context as train_context

    return train_context.__file__


# ---------------------------------------------------------------- Ray Train

def without_default_callbacks(trainer: type[TorchTrainer], unused: set[str]) -> type[TorchTrainer]:
    """`trainer` without the default callbacks of Ray Train named in `unused`. Each of them
    starts an actor process (about 1.5 s of CPU to start on 2 cores) for nothing here:
    - `DatasetsCallback` starts a DatasetManager that hands out Ray Dataset shards, when the
      workers read `HeldShards` instead;
    - `PlacementGroupCleanerCallback` starts an actor that asks Ray's state API every second
      whether the Train controller lives, to free the workers' placement group if it died
      while the cluster lives on. Under a Ray this process started without its dashboard
      there is no state API to ask (it would log a warning each second), and the cluster
      ends with this process anyway.
    A name Ray Train no longer uses leaves its callbacks as they are: in Ray 2.50.0 the hook
    `_create_default_callbacks` exists but neither callback does (its data callback is
    `DatasetsSetupCallback`), so nothing is removed there and a run only starts slower.
    Checked: Ray 2.60.0."""
    if not unused:
        return trainer

    class Trainer(trainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if type(c).__name__ not in unused]

    return Trainer


def run_storage() -> tuple[Any, str]:
    """In a training worker: (the run's pyarrow filesystem, the run folder on it), as Ray
    Train resolved them from `RunConfig(storage_path, name)` (under Tune, the trial's folder).
    `TrainContext.get_storage()` is a DeveloperAPI returning Ray Train's internal
    `StorageContext`; no public API gives the folder. Ray 2.50.0 and 2.60.0 alike."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    return storage.storage_filesystem, storage.experiment_fs_path


# ---------------------------------------------------------------- Ray Data

def block_sizes(ds) -> list[int]:
    """The size in bytes of each block of the materialized dataset `ds` (0 when unknown), in
    order. Ray's public API gives only the total (`Dataset.size_bytes`); app/data/shards.py
    needs the largest. `iter_internal_ref_bundles` is a DeveloperAPI. Ray 2.50.0 and 2.60.0."""
    return [m.size_bytes or 0 for bundle in ds.iter_internal_ref_bundles() for m in bundle.metadata]


# ---------------------------------------------------------------- Ray Serve

def serve_running() -> bool:
    """Whether Serve (its controller) runs on the connected cluster. Ray's public Serve API
    cannot tell: `serve.status()` answers alike for no Serve and a Serve running nothing (it
    asks this same private function). Ray 2.50.0 and 2.60.0 (both take the keyword)."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False) is not None


def serve_details() -> dict[str, Any]:
    """The running Serve's own description: its `http_options` (host, port) and, per
    application, its deployments and their replicas (actor name, state). app/serve.py reads
    where Serve listens and our replicas' actor names from it; `serve.status()` has neither
    (the dashboard's REST API has them, but an embedded Ray may run without its dashboard).
    Ray 2.50.0 and 2.60.0."""
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def started_ray_here() -> bool:
    """Whether this process started the Ray it is connected to (an embedded Ray: its head
    node lives and dies with this process), rather than joining a cluster. app/serve.py
    `stop` leaves Serve to such a Ray's shutdown. No public API says so. Ray 2.50.0, 2.60.0."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and node.head


# ---------------------------------------------------------------- Python

def quick_exit(code: int) -> NoReturn:
    """End this process with exit status `code` as the interpreter would, minus its teardown.

    A command that returns has done all its work. Its process then ends as any Python process
    does, in the same order: other threads finished, every exit hook run (Ray's shutdown among
    them), output flushed; but without the interpreter's teardown of the modules it loaded
    (torch, Ray, pandas), which takes 1-2 s on 2 cores and writes nothing. `threading._shutdown`
    and `atexit._run_exitfuncs` are CPython's own first two steps of exiting (undocumented;
    checked: CPython 3.11); `os._exit` is documented.
    """
    import atexit
    import threading

    threading._shutdown()  # what the interpreter does first at exit: wait for the other threads
    atexit._run_exitfuncs()  # then run the exit hooks
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
