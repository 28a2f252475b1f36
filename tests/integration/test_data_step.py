"""The data step on the shared local Ray: one big file is read and prepared by several tasks,
with exactly the arrays, counts and test rows of preparing it in this process, and Ray
Data's own readers read the same rows as `read_dataset`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from app.config import from_dict
from app.data import prepare as data_step
from app.data import sources
from app.data.prepare import inspect_sources, prepare
from tests.conftest import make_synthetic, penguins_tree


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    """The same 60,000 synthetic rows as one Parquet file of several row groups, one of a
    single row group, and one CSV file (pyarrow quotes its text values)."""
    tmp = tmp_path_factory.mktemp("big")
    table = pq.read_table(make_synthetic(tmp / "parts", 60_000))
    files = {"parquet": tmp / "groups" / "data.parquet", "one group": tmp / "one" / "data.parquet",
             "csv": tmp / "csv" / "data.csv"}
    for path in files.values():
        path.parent.mkdir()
    pq.write_table(table, files["parquet"], row_group_size=7_000)
    pq.write_table(table, files["one group"])
    pacsv.write_csv(table, files["csv"])
    return files


def config(tmp_path: Path, data: Path):
    return from_dict(penguins_tree(tmp_path, data__train=str(data), data__label="target",
                                  data__split={"valid": 0.1, "test": 0.1, "seed": 3},
                                  preprocess={"sample_rows": 2_000}), "test")


def arrays(ds) -> dict[str, np.ndarray]:
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in ("x_num", "x_cat", "y")}


@pytest.mark.parametrize("kind", ["parquet", "one group", "csv"])
def test_one_big_file_is_prepared_by_several_tasks_as_in_this_process(ray_session, big_files, tmp_path,
                                                                      monkeypatch, kind):
    cfg = config(tmp_path, big_files[kind])
    inputs = inspect_sources(cfg)
    here = prepare(cfg, inputs)  # 60,000 rows: under SMALL_INPUT_BYTES, no Ray task
    assert here.train.num_blocks() == 1
    monkeypatch.setattr(data_step, "SMALL_INPUT_BYTES", 0)
    monkeypatch.setattr(sources, "MIN_PIECE_BYTES", inputs.train.total_bytes // 5)
    on_ray = prepare(cfg, inputs)
    assert on_ray.train.num_blocks() >= 4  # a block per piece, each piece a task of its own
    assert on_ray.counts == here.counts
    # The same fit: the sample is chosen by a hash of each row's values, so the quantiles
    # and bins are those of the one-batch fit; means add up in another order.
    assert [c.quantiles for c in on_ray.state.numeric] == [c.quantiles for c in here.state.numeric]
    assert [c.mean for c in on_ray.state.numeric] == pytest.approx([c.mean for c in here.state.numeric])
    assert on_ray.state.categorical == here.state.categorical and on_ray.state.bins == here.state.bins
    for split in ("train", "valid"):
        got, expected = arrays(getattr(on_ray, split)), arrays(getattr(here, split))
        for key in expected:
            assert np.array_equal(got[key], expected[key]), (split, key)
    assert on_ray.test_raw.to_pandas().equals(here.test_raw.to_pandas())
    if kind == "parquet":  # a resumed run: the state as saved, no stats pass
        resumed = prepare(cfg, inputs, fitted=here.state)
        assert resumed.state is here.state and resumed.counts == here.counts
        assert np.array_equal(arrays(resumed.valid)["x_num"], arrays(here.valid)["x_num"])


def test_a_quoted_value_across_a_cut_makes_the_data_step_read_that_file_whole(ray_session, tmp_path, monkeypatch):
    path = tmp_path / "notes.csv"
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "note", "target"])
        for i in range(20_000):  # most bytes inside quoted values that span lines: every cut lands in one
            writer.writerow([round(float(rng.normal()), 3), "a line\n" * (i % 9 + 3), "ab"[i % 2]])
    cfg = config(tmp_path, path)
    inputs = inspect_sources(cfg)
    here = prepare(cfg, inputs)
    monkeypatch.setattr(data_step, "SMALL_INPUT_BYTES", 0)
    monkeypatch.setattr(sources, "MIN_PIECE_BYTES", inputs.train.total_bytes // 5)
    on_ray = prepare(cfg, inputs)
    assert on_ray.train.num_blocks() == 1 and on_ray.counts == here.counts
    assert np.array_equal(arrays(on_ray.train)["x_cat"], arrays(here.train)["x_cat"])


def test_read_dataset_reads_the_rows_of_ray_datas_own_readers(ray_session, big_files, tmp_path, monkeypatch):
    import ray.data

    source = sources.resolve(str(big_files["parquet"]), "data.test")
    monkeypatch.setattr(sources, "MIN_PIECE_BYTES", source.total_bytes // 3)
    ds = sources.read_dataset(source).materialize()
    assert ds.num_blocks() > 1  # a big Parquet file: several read tasks
    assert ds.to_pandas().equals(ray.data.read_parquet(source.paths[0]).to_pandas())

    folder = tmp_path / "day=2024-01-02"  # a key=value folder is a column to Ray Data's readers
    folder.mkdir()
    lines = (Path(__file__).parents[2] / "data" / "penguins.csv").read_text().splitlines()
    for i in range(2):
        (folder / f"part-{i}.csv").write_text("\n".join([lines[0], *lines[1 + 150 * i:151 + 150 * i]]))
    source = sources.resolve(str(tmp_path), "data.test")
    types = {"bill_length_mm": pa.float64(), "island": pa.string()}
    mine = sources.read_dataset(source, types).to_pandas()
    every = sources.csv_read_types(lines[0].split(","), types)[0]  # the other columns as text
    plain = ray.data.read_csv(list(source.paths), convert_options=sources.csv_convert_options(every)).to_pandas()
    assert mine.columns.tolist() == plain.columns.tolist() and mine["day"].eq("2024-01-02").all()
    assert mine.equals(plain)


def test_bins_are_fitted_only_for_a_model_that_embeds_numbers(ray_session, tmp_path):
    """tabm's piecewise-linear embeddings need bins; an mlp does not, and its data step skips them."""
    tree = penguins_tree(tmp_path)
    mlp = from_dict(tree | {"model": {"kind": "mlp"}}, "test")
    tabm = from_dict(tree | {"model": {"kind": "tabm"}}, "test")
    inputs = inspect_sources(mlp)
    assert prepare(mlp, inputs).state.bins == []
    fitted = prepare(tabm, inputs).state
    assert len(fitted.bins) == fitted.numeric_width > 0
    assert prepare(mlp, inputs, bins=True).state.bins == fitted.bins  # a sweep's shared preparation
