"""The layout rules of app/: no import cycle (imports inside functions count), one module
that touches filesystems, and each run-folder file name spelled once."""

from __future__ import annotations

import ast
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
    """README's map of app/ lists each module below every app module it imports."""
    text = (APP.parent / "README.md").read_text()
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
        assert above <= seen, f"README lists {name} above {sorted(above - seen)}, which it imports"
        seen.add(name)
