"""Render the config reference (docs/config.md) from the config models in app/config.py.

    python scripts/config_docs.py           # print the generated tables
    python scripts/config_docs.py --check   # exit 1 if docs/config.md is out of date
    python scripts/config_docs.py --write   # rewrite docs/config.md between the markers

One table per config section (key, default, meaning): the top level first, then each section
followed by its subsections, in the order the models declare them. The meaning of a key is
its field's docstring; a subsection's own docstring is the note after its heading. Defaults
come from the fields and are written as YAML. Links in the docstrings are relative to docs/.
tests/unit/test_config_docs.py fails when docs/config.md differs from what this renders.
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Config, parse_yaml

TARGET = REPO / "docs" / "config.md"
NAME = "docs/config.md"
START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
NOTE = ("<!-- Generated from the field docstrings in app/config.py: edit those, then run "
        "`python scripts/config_docs.py --write`. -->")


def sections(model: type[BaseModel] = Config, path: str = "",
             note: str | None = None) -> Iterator[tuple[str, str | None, type[BaseModel]]]:
    """(dotted path, note, model) of `model` and of every section nested in it, depth first."""
    yield path, note, model
    for name, field in model.model_fields.items():
        sub = section_model(field)
        if sub is not None:
            yield from sections(sub, f"{path}.{name}" if path else name, field.description)


def section_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a field that is a section of its own (data.split), else None."""
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def keys(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """The fields of a section that are keys (table rows), not sections."""
    for name, field in model.model_fields.items():
        if section_model(field) is None:
            yield name, field


def undocumented(root: type[BaseModel] = Config) -> list[str]:
    """Dotted names of the fields, keys and sections alike, that have no docstring."""
    missing = []
    for path, _, model in sections(root):
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                missing.append(f"{path}.{name}" if path else name)
    return missing


def choices(field: FieldInfo) -> list[Any]:
    """The allowed values of a Literal field (also inside `int | Literal["auto"]`)."""
    found: list[Any] = []

    def walk(tp: Any) -> None:
        if typing.get_origin(tp) is typing.Literal:
            found.extend(typing.get_args(tp))
        else:
            for arg in typing.get_args(tp):
                walk(arg)

    walk(field.annotation)
    return found


def yaml_value(value: Any) -> str:
    """A default as it would be written in the config file (YAML 1.2, flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value and math.isfinite(value) and not 1e-2 <= abs(value) < 1e6:
            # 2.0e-3, as in the example configs: the fewest digits that read back the same
            digits = next(p for p in range(17) if float(f"{value:.{p}e}") == value)
            mantissa, exponent = f"{value:.{digits}e}".split("e")
            return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{int(exponent)}"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_value(k)}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (not value or parse_yaml(value) != value or value != value.strip()):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def default_cell(field: FieldInfo) -> str:
    return "required" if field.is_required() else f"`{yaml_value(field.get_default(call_default_factory=True))}`"


def cell(text: str | None) -> str:
    """One table cell: a docstring on one line, its pipes escaped."""
    return " ".join((text or "").split()).replace("|", "\\|")


def render(root: type[BaseModel] = Config) -> str:
    """The markdown of the config reference: a note for editors, then the tables."""
    blocks = [NOTE]
    for path, note, model in sections(root):
        heading = f"**`{path}`**" if path else "**top level**"
        if note:
            heading += f" ({cell(note)})"
        rows = [f"| `{name}` | {default_cell(field)} | {cell(field.description)} |" for name, field in keys(model)]
        if rows:
            blocks.append("\n".join([heading, "", "| key | default | meaning |", "|---|---|---|", *rows]))
    return "\n\n".join(blocks) + "\n"


def replace_region(text: str, generated: str) -> str:
    """`text` with everything between the START and END markers replaced by `generated`."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{NAME} needs exactly one {START} line followed by one {END} line")
    before, rest = text.split(START)
    _, after = rest.split(END)
    return f"{before}{START}\n{generated}{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite the config reference in {NAME}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if {NAME} is out of date")
    args = parser.parse_args(argv)

    missing = undocumented()
    if missing:
        print(f"error: config field(s) without a docstring in app/config.py: {', '.join(missing)}", file=sys.stderr)
        return 1
    generated = render()
    if not (args.write or args.check):
        sys.stdout.write(generated)
        return 0
    text = TARGET.read_text(encoding="utf-8")
    expected = replace_region(text, generated)
    if args.check:
        if expected != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), expected.splitlines(True),
                                                       NAME, f"{NAME} (generated)"))
            print(f"{NAME}: the config reference is out of date; run python scripts/config_docs.py --write",
                  file=sys.stderr)
            return 1
        return 0
    if expected != text:
        TARGET.write_text(expected, encoding="utf-8")
        print(f"{NAME}: config reference updated")
    else:
        print(f"{NAME}: config reference already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
