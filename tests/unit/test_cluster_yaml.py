"""cluster.yaml passes Ray's own autoscaler schema and agrees with the README."""

from __future__ import annotations

import yaml

from tests.conftest import REPO


def load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_valid_for_ray_up():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    config = load()
    validate_config(prepare_config(config))  # raises jsonschema.ValidationError when invalid
    groups = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert groups["cpu_workers"]["min_workers"] == 0 < groups["cpu_workers"]["max_workers"]  # autoscaling
    assert "g5" in groups["gpu_workers"]["node_config"]["InstanceType"]  # a GPU group


def test_dashboard_stays_on_the_head_loopback():
    head_start = " ".join(load()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_setup_installs_the_pinned_versions_as_the_docs_say():
    readme = (REPO / "docs" / "scale-out.md").read_text()
    setup = load()["setup_commands"]
    assert any("-c ~/app/constraints.txt" in command for command in setup)
    for command in setup:
        assert command in readme, f"docs/scale-out.md does not show the setup command: {command}"


def test_every_non_default_key_is_explained():
    """Each line that sets a key in cluster.yaml carries a comment, or sits under one."""
    lines = (REPO / "cluster.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        key, _, value = stripped.partition(":")
        if value.strip() in ("", ">-"):  # a section header; its children are checked
            continue
        above = lines[i - 1].strip() if i else ""
        assert "#" in line or above.startswith("#") or _section_commented(lines, i), f"line {i + 1}: {line}"


def _section_commented(lines, i):
    indent = len(lines[i]) - len(lines[i].lstrip())
    for j in range(i - 1, -1, -1):
        other = lines[j]
        if other.strip() and len(other) - len(other.lstrip()) < indent:
            return "#" in other or (j and lines[j - 1].strip().startswith("#"))
    return False
