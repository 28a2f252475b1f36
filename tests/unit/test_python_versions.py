"""pyproject.toml's `requires-python` is honest: the package parses as the oldest Python it
names, and uses no name of the standard library that Python added later."""

from __future__ import annotations

import ast
import re
import tomllib

from tests.conftest import REPO

# Standard-library names added in Python 3.11 or 3.12 that an app module could reach for.
NEWER = re.compile(r"\bimport tomllib\b|\bExceptionGroup\b|\bStrEnum\b|\bTaskGroup\b|\basyncio\.timeout\(|"
                   r"\bdatetime\.UTC\b|from typing import [^\n]*\b(Self|Never|LiteralString|Unpack|TypeVarTuple|override)\b")


def oldest_python() -> tuple[int, int]:
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def test_every_module_parses_as_the_oldest_python_allowed():
    version = oldest_python()
    for path in sorted((REPO / "app").rglob("*.py")):
        ast.parse(path.read_text(), str(path), feature_version=version)  # a SyntaxError names the file


def test_no_module_uses_a_newer_standard_library_name():
    assert oldest_python() < (3, 11)  # (else this check has nothing to do)
    found = [f"{path.relative_to(REPO)}: {m.group(0)}" for path in sorted((REPO / "app").rglob("*.py"))
             for m in NEWER.finditer(path.read_text())]
    assert found == []
