"""Every code block of README.md and docs/*.md is checked here without running anything
long (tests/docs_blocks.py says what is checked, and which blocks are only parsed);
tests/e2e/test_docs_run.py runs them. Also: the README stays short, every link between the
pages lands, and docs/api.md lists what the library changes in the caller's process."""

from __future__ import annotations

import ast
import re

import pytest
import tomllib
import yaml

from tests.docs_blocks import (
    LANGS,
    PAGES,
    REPO,
    all_blocks,
    commands,
    deep_merge,
    repo_paths,
)

BLOCKS = all_blocks()
BASH = [b for b in BLOCKS if b.kind == "bash"]
COMMANDS = [c for b in BASH for c in commands(b)]


def test_the_readme_is_read_in_five_minutes():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move the reference into docs/"


def test_every_block_says_its_language_and_none_is_indented():
    unknown = [f"{b.where()}: {b.lang!r}" for b in BLOCKS if b.kind is None]
    assert not unknown, f"code blocks without a known language ({', '.join(LANGS)}): {unknown}"
    for page in PAGES:
        for no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not re.match(r"\s+```", line), f"{page.relative_to(REPO)}:{no}: an indented code fence"
    assert sum(b.kind == "python" for b in BLOCKS) >= 3 and len(COMMANDS) >= 10


def test_not_run_markers_give_a_reason_and_sit_on_blocks_that_run():
    for b in BLOCKS:
        if b.not_run is not None:
            assert len(b.not_run) > 10, f"{b.where()}: say why the block is not run"
            assert b.kind in ("bash", "python"), f"{b.where()}: a {b.lang} block is never run anyway"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "python"], ids=lambda b: b.where())
def test_python_blocks_compile_and_use_public_names(block):
    import app

    tree = ast.parse(block.text, filename=block.where())
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "app"}
    unknown = used - set(app.__all__)
    assert not unknown, f"{block.where()}: app.{', app.'.join(sorted(unknown))} is not in app.__all__"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "yaml"], ids=lambda b: b.where())
def test_yaml_blocks_are_valid_configs(block):
    from app.config import from_dict

    fragment = yaml.safe_load(block.text)
    assert isinstance(fragment, dict), f"{block.where()}: not a mapping"
    base = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    from_dict(deep_merge(base, fragment), block.where())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.block.page.name}:{c.line}")
def test_commands_parse_and_name_files_that_exist(command):
    from app.cli import build_parser

    for path in repo_paths(command.argv):
        assert (REPO / path).exists(), f"{command.where()}: no {path} in the repo"
    argv = command.argv
    if re.fullmatch(r"(bash )?scripts/\S+\.sh", " ".join(argv[:2]) if argv[0] == "bash" else argv[0]):
        script = REPO / (argv[1] if argv[0] == "bash" else argv[0])
        assert script.is_file() and (argv[0] == "bash" or script.stat().st_mode & 0o111), \
            f"{command.where()}: {script.relative_to(REPO)} is not an executable script"
    if argv[:2] == ["pip", "install"]:
        extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for word in argv[2:]:
            name, _, extra = word.partition("[")
            assert name == "raytab", f"{command.where()}: the distribution is raytab"
            if extra:
                assert extra.rstrip("]") in extras, f"{command.where()}: no extra {extra.rstrip(']')!r}"
    args = command.app_args
    if args is None:
        return
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as e:
        assert e.code == 0 and "--help" in args, f"{command.where()}: the CLI refuses it (exit {e.code})"
        return
    config = getattr(parsed, "config", None)
    if config and (REPO / config).is_file():
        from app.config import load_config

        load_config(REPO / config, parsed.overrides)  # a bad --set key or value raises UserError


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page) -> set[str]:
    """GitHub's anchors of a page's headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_land(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(REPO)}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.relative_to(REPO)}: link to {target}: no such heading"


def test_the_api_page_lists_what_the_library_changes_in_the_process():
    from app import cluster

    page = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    source = (REPO / "app" / "cluster.py").read_text(encoding="utf-8")
    variables = {*cluster.EMBEDDED_TRAIN_ENV, *re.findall(r'os\.environ\.setdefault\("(\w+)"', source)}
    for name in variables:
        assert f"`{name}" in page, f"docs/api.md does not list the environment variable {name}"
    for name, value in cluster.EMBEDDED_TRAIN_ENV.items():
        assert f"`{value}`" in page.split(f"`{name}`", 1)[1].split("\n", 1)[0], f"docs/api.md: {name}'s value"
    for key in cluster.EMBEDDED_RAY_CONFIG:
        assert f"`{key}:" in page, f"docs/api.md does not list the Ray setting {key}"
