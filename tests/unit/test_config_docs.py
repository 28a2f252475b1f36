"""The config reference (docs/config.md) is generated from app/config.py and cannot drift from it."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest
from pydantic import Field

from app.config import Config, TrainConfig, parse_yaml

REPO = Path(__file__).resolve().parents[2]
FIX = "run `python scripts/config_docs.py --write`"


def _load_script():
    spec = importlib.util.spec_from_file_location("config_docs", REPO / "scripts" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs = _load_script()


def test_config_reference_matches_the_models():
    text = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    expected = docs.replace_region(text, docs.render())
    if text != expected:
        diff = "".join(list(difflib.unified_diff(text.splitlines(True), expected.splitlines(True),
                                                 "docs/config.md", "generated"))[:60])
        pytest.fail(f"docs/config.md's config reference differs from app/config.py; {FIX}\n{diff}")


def test_every_field_has_a_docstring():
    missing = docs.undocumented()
    assert not missing, f"config fields without a docstring in app/config.py: {', '.join(missing)}"


def test_every_section_is_rendered_and_every_key_is_a_row():
    generated = docs.render()
    for path, _, model in docs.sections():
        if path:
            assert f"**`{path}`**" in generated
        for name, _ in docs.keys(model):
            assert f"| `{name}` |" in generated, f"{path}.{name}"
    assert "**`data.split`**" in generated and "**`run.checkpoint`**" in generated
    assert "**`tune.scheduler`**" in generated


def test_every_choice_is_named_in_the_docstring():
    """A value added to a Literal (or `auto`) must be documented where the key is."""
    unnamed = []
    for path, _, model in docs.sections():
        for name, field in docs.keys(model):
            for value in docs.choices(field):
                if f"`{value}`" not in field.description:
                    unnamed.append(f"{path}.{name}: {value}")
    assert not unnamed, f"allowed values not named (as `value`) in the field's docstring: {unnamed}"


def test_defaults_are_shown_as_the_yaml_that_means_them():
    for path, _, model in docs.sections():
        for name, field in docs.keys(model):
            cell = docs.default_cell(field)
            if field.is_required():
                assert cell == "required"
                continue
            assert cell.startswith("`") and cell.endswith("`")
            assert parse_yaml(cell[1:-1]) == field.get_default(call_default_factory=True), f"{path}.{name}: {cell}"


@pytest.mark.parametrize("value, shown", [
    (2.0e-3, "2.0e-3"), (3.0e-4, "3.0e-4"), (1.25e-5, "1.25e-5"), (0.15, "0.15"), (1.0, "1.0"), (2, "2"),
    (None, "null"), (True, "true"), ([128, 64], "[128, 64]"), ({}, "{}"), ({"worker": 1.0}, "{worker: 1.0}"),
    ("auto", "auto"), ("null", '"null"'), ("5", '"5"'), ("", '""'),
])
def test_yaml_values(value, shown):
    assert docs.yaml_value(value) == shown
    assert parse_yaml(shown) == value


def test_a_changed_default_or_an_undocumented_key_is_caught():
    """The checks above can fail: the rendering follows defaults, and a bare field is reported."""

    class Drifted(TrainConfig):
        lr: float = Field(1.0e-3, gt=0)
        """Peak learning rate of AdamW."""
        new_knob: int = 3

    class DriftedConfig(Config):
        train: Drifted = Drifted()
        """see [Training details](training.md)"""

    assert docs.render(DriftedConfig) != docs.render(Config)
    assert "| `lr` | `1.0e-3` | Peak learning rate of AdamW. |" in docs.render(DriftedConfig)
    assert docs.undocumented(DriftedConfig) == ["train.new_knob"]
    assert docs.undocumented(Config) == []


def test_region_markers():
    start, end = docs.START, docs.END
    assert docs.replace_region(f"a\n{start}\nold\n{end}\nb\n", "new\n") == f"a\n{start}\nnew\n{end}\nb\n"
    for broken in ("no markers", f"{end}\n{start}\n", f"{start}\n{start}\n{end}\n"):
        with pytest.raises(ValueError, match="config-reference"):
            docs.replace_region(broken, "new\n")


def test_the_metric_registry_and_the_checkpoint_metric_docs_agree():
    from app.config import HIGHER_IS_BETTER, TASK_METRICS, CheckpointConfig

    metric_doc = CheckpointConfig.model_fields["metric"].description
    missing = [m for names in TASK_METRICS.values() for m in names if m not in metric_doc]
    assert not missing, f"run.checkpoint.metric's docstring does not name {', '.join(missing)}"
    mode_doc = CheckpointConfig.model_fields["mode"].description
    named_max = mode_doc.split("`max` for ", 1)[1].split(")", 1)[0]
    assert set(named_max.split(", ")) == set(HIGHER_IS_BETTER), "run.checkpoint.mode: where higher is better"


def test_links_in_the_docstrings_point_at_docs_pages():
    """The docstrings' links are relative to docs/ (where the reference is rendered): each
    names a page that exists, and an anchor that is one of its headings."""
    import re

    generated = docs.render()
    links = re.findall(r"\]\(([^)]+)\)", generated)
    assert links, "the reference links into the other docs pages"
    for link in links:
        page, _, anchor = link.partition("#")
        assert page and not page.startswith(("/", "http")), f"{link}: a page beside docs/config.md"
        path = REPO / "docs" / page
        assert path.is_file(), f"{link}: no {path.relative_to(REPO)}"
        if anchor:
            headings = [re.sub(r"[^a-z0-9 _-]", "", h.lower()).strip().replace(" ", "-")
                        for h in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)]
            assert anchor in headings, f"{link}: no heading #{anchor} in docs/{page}"


def test_the_readme_no_longer_holds_the_reference():
    assert docs.START not in (REPO / "README.md").read_text(encoding="utf-8")
