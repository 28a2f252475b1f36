"""Every private name app/ray_compat.py relies on still exists in the installed Ray (and
Python): after an upgrade, this names each one that moved, before a run trips over it."""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import textwrap
from pathlib import Path

import pytest

from app import ray_compat


def resolve(module: str, path: str) -> None:
    """Import `module` and look up the dotted `path` in it; an attribute of instances only (a
    dataclass field, or one that a class's __init__ assigns to `self`) is looked for there.
    Raises AssertionError naming what moved."""
    where = f"{module}.{path}"
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise AssertionError(f"{where}: module {module} is gone ({e}); see app/ray_compat.py") from None
    parts = path.split(".")
    for i, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        last = i == len(parts) - 1
        if last and inspect.isclass(obj) and part in instance_attributes(obj):
            return
        raise AssertionError(f"{where}: {'.'.join([module, *parts[:i]])} has no {part!r}; see app/ray_compat.py")


def instance_attributes(cls: type) -> set[str]:
    """The dataclass or pydantic fields of `cls` and the `self.<name>` its __init__ methods assign."""
    names = set(getattr(cls, "__dataclass_fields__", {})) | set(getattr(cls, "model_fields", {}))
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        except (OSError, TypeError):  # none, or not Python
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


@pytest.mark.parametrize(("module", "path", "since"), ray_compat.INTERNALS,
                         ids=[f"{m}:{p}" for m, p, _ in ray_compat.INTERNALS])
def test_internal_name_still_exists(module, path, since):
    import ray

    if module.startswith("ray") and version(ray.__version__) < version(since):
        pytest.skip(f"{module}.{path} is checked from Ray {since} on; app/ray_compat.py does without it before")
    resolve(module, path)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_resolver_names_what_moved():
    with pytest.raises(AssertionError, match=r"ray\._private\.utils\.no_such_name: .* has no 'no_such_name'"):
        resolve("ray._private.utils", "no_such_name")
    with pytest.raises(AssertionError, match=r"module ray\._no_such_module is gone"):
        resolve("ray._no_such_module", "x")
    with pytest.raises(AssertionError, match=r"ray\._private\.node\.Node\.no_such_attribute: "):
        resolve("ray._private.node", "Node.no_such_attribute")
    resolve("ray._private.node", "Node.head")  # set in __init__, found there
    resolve("ray.data.block", "BlockMetadata.size_bytes")  # a dataclass field


@pytest.mark.parametrize("name", [ray_compat.AUTH_TOKEN_LOGGER, ray_compat.DATA_PROGRESS_LOGGER])
def test_quieted_loggers_are_the_ones_ray_logs_with(name):
    module = importlib.import_module(name)
    assert isinstance(module.logger, logging.Logger) and module.logger.name == name, \
        f"{name} no longer logs under its module name; see app/ray_compat.py"


def test_the_train_report_logger_is_named_after_its_file():
    import ray.train.v2._internal.execution.context as train_context

    assert train_context.logger.name == ray_compat.train_report_logger()


def test_the_callbacks_removed_are_among_ray_trains_defaults():
    """The class names `without_default_callbacks` filters on, as Ray Train creates them."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    source = inspect.getsource(DataParallelTrainer._create_default_callbacks)
    for name in ("DatasetsCallback", "PlacementGroupCleanerCallback"):
        assert f"{name}(" in source, f"Ray Train no longer creates {name}; see app/ray_compat.py"


def test_without_default_callbacks_filters_by_class_name():
    class Kept:
        pass

    class DatasetsCallback:
        pass

    class Base:
        def _create_default_callbacks(self):
            return [Kept(), DatasetsCallback()]

    assert ray_compat.without_default_callbacks(Base, set()) is Base
    trimmed = ray_compat.without_default_callbacks(Base, {"DatasetsCallback"})
    assert [type(c).__name__ for c in trimmed()._create_default_callbacks()] == ["Kept"]


def test_quick_exit_runs_the_exit_hooks_and_exits_with_the_code():
    import subprocess
    import sys

    script = ("import atexit, threading, time\n"
              "from app.ray_compat import quick_exit\n"
              "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done', flush=True))).start()\n"
              "atexit.register(print, 'exit hook')\n"
              "quick_exit(3)\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["thread done", "exit hook"]


def test_ray_tune_still_says_so_when_its_stop_handler_ends_a_sweep():
    import inspect

    import ray.tune.tune as tune_module

    assert tune_module.logger.name == ray_compat.TUNE_LOGGER
    assert f'"{ray_compat.TUNE_STOP_WARNING}' in inspect.getsource(tune_module._setup_signal_catching), \
        "Ray Tune no longer logs its stop warning; see app/ray_compat.py tune_stop_seen"
