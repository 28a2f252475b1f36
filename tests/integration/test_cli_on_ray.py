"""`app.cli.main` in this process, on the shared local Ray (it joins the Ray that is already
up): the bad input that only a Ray Data pass or the cluster's resources reveal (exit 2 with one
line naming the problem, no traceback, no metrics.json), and the odd values the data step
handles with a warning (an empty column, infinite feature values, too many categories)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

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


def test_text_in_a_numeric_column_of_a_later_csv_part_names_the_file_and_column(ray_session, tmp_path, capsys):
    lines = PENGUINS.read_text().splitlines()
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part-0.csv").write_text("\n".join(lines[:150]))
    later = [lines[0]] + lines[150:]
    fields = later[20].split(",")
    later[20] = ",".join(fields[:3] + ["n/a?"] + fields[4:])  # bill_depth_mm: numbers in part-0
    (tmp_path / "parts" / "part-1.csv").write_text("\n".join(later))
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(tmp_path / "parts")))
    assert_refused(["train", "--config", str(cfg)], capsys, tmp_path / "runs" / "quickstart",
                   "data.train: cannot read", "part-1.csv", "column 'bill_depth_mm' holds 'n/a?', which is not a number")


def test_more_workers_than_the_cluster_can_host(ray_session, tmp_path, capsys):
    cfg = write_config(tmp_path, penguins_tree(tmp_path))
    have = int(ray_session.cluster_resources()["CPU"])
    assert_refused(["train", "--config", str(cfg), "--set", f"scaling.num_workers={have + 1}"], capsys,
                     tmp_path / "runs" / "quickstart", f"scaling.num_workers: {have + 1} worker(s)",
                     "can never be scheduled")


def test_infinite_regression_label_is_refused(ray_session, tmp_path, capsys):
    def infinite(header, rows):
        rows[7][header.index("body_mass_g")] = "inf"
        return header, rows

    data = penguins_with(tmp_path, infinite)
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(data), data__label="body_mass_g"))
    assert_refused(["train", "--config", str(cfg)], capsys, tmp_path / "runs" / "quickstart",
                   "data.label: 'body_mass_g' has 1 infinite value(s)", "edited.csv")


def test_numbers_stored_as_text_in_parquet_are_refused(ray_session, tmp_path, capsys):
    table = pacsv.read_csv(PENGUINS, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    i = table.schema.get_field_index("bill_depth_mm")
    pq.write_table(table.set_column(i, "bill_depth_mm", table.column(i).cast(pa.string())), tmp_path / "p.parquet")
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(tmp_path / "p.parquet")))
    assert_refused(["train", "--config", str(cfg)], capsys, tmp_path / "runs" / "quickstart",
                   "column 'bill_depth_mm' holds only numbers but is stored as text", "data.categorical")


def test_odd_values_are_handled_as_documented(ray_session, tmp_path, capsys):
    """An all-empty column is dropped, infinite feature values are missing values, and
    categories beyond data.max_categories go to the unknown bucket: each with a warning."""
    def odd(header, rows):
        for r in rows[::8]:
            r[header.index("bill_length_mm")] = "-inf" if len(r[0]) % 2 else "inf"
        return header + ["comment"], [r + ["NA"] for r in rows]

    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(penguins_with(tmp_path, odd)),
                                               data__max_categories=2, train__epochs=1, model__kind="mlp",
                                               preprocess={"numeric_scaling": "standard"}))
    assert main(["train", "--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "warning: column(s) comment have no values in the training split and are dropped" in err
    assert re.search(r"warning: column 'bill_length_mm' has \d+ infinite value\(s\) in the training split; "
                     r"they are treated as missing", err), err
    # island: Biscoe 168, Dream 124, Torgersen 52 rows in all
    assert "warning: column 'island' has 3 categories, more than data.max_categories (2): the 2 most frequent " \
           "are kept and the other 1 go to the unknown bucket" in err
    metrics = json.loads((tmp_path / "runs" / "quickstart" / "metrics.json").read_text())
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_loss"]) for r in metrics["history"])
    state = json.loads((Path(metrics["best_checkpoint"]) / "preprocess.json").read_text())
    assert state["dropped"] == ["comment"]
    assert "comment" not in [c["name"] for c in state["numeric"] + state["categorical"]]
    assert [c["categories"] for c in state["categorical"] if c["name"] == "island"] == [["Biscoe", "Dream"]]
    bill = next(c for c in state["numeric"] if c["name"] == "bill_length_mm")
    assert math.isfinite(bill["mean"]) and math.isfinite(bill["std"]) and bill["indicator"]
