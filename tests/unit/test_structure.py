"""The layout rules of app/: no import cycle (imports inside functions count), one module
that touches filesystems, one that touches Ray's (and Python's) private APIs, and each
run-folder file name spelled once."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

from app import runs

APP = Path(__file__).resolve().parents[2] / "app"


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(APP.rglob("*.py")):
        parts = list(path.relative_to(APP.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return found


def imported(tree: ast.Module, known: set[str]) -> set[str]:
    """The app modules a module imports anywhere in its body (functions included)."""
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from app.data import sources` imports app.data.sources; `from app.x import f`, app.x
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != "app":
                out.add(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycles():
    trees = modules()
    graph = {name: imported(tree, set(trees)) - {name} for name, tree in trees.items()}
    assert "app.storage" in graph["app.runs"]  # the walk does see imports
    assert cycles(graph) == []


# Built on app/training/ (loop, trainer, resume, faults): what it may never import. The driver's
# run, which scores with the predictor, is app/runner.py; the checkpoint format, which the
# predictor, serve, export and tuning read, is app/checkpoint.py.
ABOVE_TRAINING = {"app.predictor", "app.runner", "app.tuning", "app.baselines", "app.report", "app.predicting",
                  "app.evaluating", "app.export", "app.serve", "app.submit", "app.api", "app.cli", "app.__main__"}


def test_training_imports_nothing_built_on_it():
    trees = modules()
    assert {"app.checkpoint", "app.runner", "app.training.resume", "app.training.trainer"} <= set(trees)
    assert "app.training.checkpoint" not in trees
    for name, tree in trees.items():
        if name.startswith("app.training."):
            assert imported(tree, set(trees)) & ABOVE_TRAINING == set(), name


def test_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_only_storage_imports_pyarrow_fs():
    users = set()
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "pyarrow.fs" for a in node.names):
                users.add(name)
            if isinstance(node, ast.ImportFrom) and (node.module == "pyarrow.fs" or (
                    node.module == "pyarrow" and any(a.name == "fs" for a in node.names))):
                users.add(name)
    assert users == {"app.storage"}


def test_run_folder_names_are_spelled_once():
    # file names and the checkpoint prefix (folder names such as "trials" are common words)
    names = {v for k, v in vars(runs).items() if k.isupper() and isinstance(v, str) and ("." in v or v.endswith("_"))}
    assert {"metrics.json", "config.yaml", "leaderboard.csv", "checkpoint_manager_snapshot.json",
            "checkpoint_epoch_"} <= names
    spelled = []
    for module, tree in modules().items():
        if module == "app.runs":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                spelled.append((module, node.value))
    assert spelled == []


def test_the_readme_module_map_is_in_dependency_order():
    """The map of app/ (docs/development.md) lists each module below every app module it imports."""
    text = (APP.parent / "docs" / "development.md").read_text()
    block = text.split("\napp/ ", 1)[1].split("```", 1)[0]
    listed = []
    for line in block.splitlines()[1:]:
        if not line.startswith("  "):  # the end of app/'s entries
            break
        listed.append("app." + line.split()[0].removesuffix(".py").replace("/", "."))
    trees = modules()
    assert set(listed) == set(trees) - {"app", "app.data", "app.training", "app.exported", "app.exported.predict"}
    seen: set[str] = set()
    for name in listed:
        above = imported(trees[name], set(trees)) - {name, "app.data", "app.training"}
        assert above <= seen, f"docs/development.md lists {name} above {sorted(above - seen)}, which it imports"
        seen.add(name)


PRIVATE_RAY_MODULE = re.compile(r"^ray(\.\w+)*\._\w+")  # ray._private..., ray.data._internal...


def wrapped_calls() -> set[str]:
    """The names of the functions and methods listed in app/ray_compat.py's INTERNALS (not its
    classes, fields or loggers, whose names are common words): `iter_internal_ref_bundles`, ..."""
    import importlib

    from app import ray_compat

    names = set()
    for module, path, _ in ray_compat.INTERNALS:
        obj = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if callable(obj) and not isinstance(obj, type) and not isinstance(obj, logging.Logger):
            names.add(path.rsplit(".", 1)[-1])
    return names


def private_uses(tree: ast.Module) -> list[str]:
    """What a module reaches of Ray's (or Python's) non-public API: a private Ray module or
    name imported, a private Ray module named in a string (a logger), an underscore attribute
    of an imported module (`ray._private`, `os._exit`), or a name app/ray_compat.py wraps."""
    wrapped = wrapped_calls()
    modules = set()  # names bound to a module imported from outside app
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "app":
                    modules.add(alias.asname or alias.name.split(".")[0])
                if PRIVATE_RAY_MODULE.match(alias.name):
                    found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if PRIVATE_RAY_MODULE.match(node.module):
                found.append(f"from {node.module} import ...")
            elif node.module.split(".")[0] == "ray":
                found += [f"from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") or a.name in wrapped]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and PRIVATE_RAY_MODULE.match(node.value):
            found.append(repr(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.endswith("__")
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if (private and isinstance(root, ast.Name) and root.id in modules) or node.attr in wrapped:
                found.append(f"{ast.unparse(node)}")
    return found


def test_only_ray_compat_touches_private_apis():
    uses = {name: found for name, tree in modules().items()
            if name != "app.ray_compat" and (found := private_uses(tree))}
    assert uses == {}, "use app/ray_compat.py for these (one function per internal, with why and versions)"


def test_the_private_api_check_sees_them():
    source = """
import os
import ray._private.worker
from ray.serve.context import _get_global_client
from ray.data import DataContext
logging.getLogger("ray.data._internal.progress")
node = ray._private.worker._global_node
ds.iter_internal_ref_bundles()
os._exit(0)
record._replace(a=1)
self._thread
"""
    assert sorted(private_uses(ast.parse(source))) == sorted([
        "import ray._private.worker", "from ray.serve.context import _get_global_client",
        "'ray.data._internal.progress'", "ray._private.worker._global_node", "ray._private",
        "ds.iter_internal_ref_bundles", "os._exit"])
