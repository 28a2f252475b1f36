"""`app.cli.main` in this process, on the shared local Ray (it joins the Ray that is already
up): the bad input that only a Ray Data pass or the cluster's resources reveal, and a column
with no values. Exit 2 with one line naming the problem, no traceback, no metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import main
from tests.conftest import PENGUINS, penguins_tree
from tests.unit.test_cli_errors import assert_bad_input, write_config


def assert_refused(args: list[str], capsys, run_dir: Path, *fragments: str) -> None:
    assert_bad_input(args, capsys, *fragments)
    assert not (run_dir / "metrics.json").exists()


def penguins_with(tmp_path: Path, edit) -> Path:
    """The penguins CSV after `edit(header, rows)`, where rows are lists of fields."""
    lines = PENGUINS.read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    header, rows = edit(header, rows)
    data = tmp_path / "edited.csv"
    data.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]))
    return data


def test_single_class_label(ray_session, tmp_path, capsys):
    data = penguins_with(tmp_path, lambda h, rows: (h, [r for r in rows if r[0] == "Adelie"]))
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(data)))
    assert_refused(["train", "--config", str(cfg)], capsys, tmp_path / "runs" / "quickstart",
                     "data.label", "single class")


def test_numeric_column_with_stray_strings(ray_session, tmp_path, capsys):
    def stray(header, rows):
        rows[5][header.index("bill_depth_mm")] = "n/a?"
        return header, rows

    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(penguins_with(tmp_path, stray))))
    assert_refused(["train", "--config", str(cfg)], capsys, tmp_path / "runs" / "quickstart",
                     "'bill_depth_mm' looks numeric", "'n/a?'")


def test_more_workers_than_the_cluster_can_host(ray_session, tmp_path, capsys):
    cfg = write_config(tmp_path, penguins_tree(tmp_path))
    have = int(ray_session.cluster_resources()["CPU"])
    assert_refused(["train", "--config", str(cfg), "--set", f"scaling.num_workers={have + 1}"], capsys,
                     tmp_path / "runs" / "quickstart", f"scaling.num_workers: {have + 1} worker(s)",
                     "can never be scheduled")


def test_all_missing_column_is_dropped_with_a_warning(ray_session, tmp_path, capsys):
    data = penguins_with(tmp_path, lambda h, rows: (h + ["comment"], [r + ["NA"] for r in rows]))
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(data), train__epochs=1,
                                               model__kind="mlp"))
    assert main(["train", "--config", str(cfg)]) == 0
    assert "warning: column(s) comment have no values in the training split and are dropped" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "runs" / "quickstart" / "metrics.json").read_text())
    state = json.loads((Path(metrics["best_checkpoint"]) / "preprocess.json").read_text())
    assert state["dropped"] == ["comment"]
    assert "comment" not in [c["name"] for c in state["numeric"] + state["categorical"]]

