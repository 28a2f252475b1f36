import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.config import from_dict
from app.data import sources
from app.data.prepare import inspect_sources
from app.data.split import SPLIT_COLUMN
from app.errors import UserError
from tests.conftest import penguins_tree
from tests.unit.test_cli_errors import assert_bad_input, write_config


def test_file_folder_and_glob(tmp_path):
    for i in range(3):
        pq.write_table(pa.table({"a": [i]}), tmp_path / f"part-{i}.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("x")
    assert len(sources.resolve(str(tmp_path), "data.train").paths) == 3
    glob = sources.resolve(str(tmp_path / "part-[01].parquet"), "data.train")
    assert [p.rsplit("/", 1)[1] for p in glob.paths] == ["part-0.parquet", "part-1.parquet"]
    one = sources.resolve(str(tmp_path / "part-2.parquet"), "data.train")
    assert one.format == "parquet" and sources.read_table(one).column("a").to_pylist() == [2]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(UserError, match=r"data.train: .*nope.csv does not exist"):
        sources.resolve(str(tmp_path / "nope.csv"), "data.train")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match=r"data.train: .*empty.csv is empty"):
        sources.resolve(str(tmp_path / "empty.csv"), "data.train")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(UserError, match="not a .csv or .parquet file"):
        sources.resolve(str(tmp_path / "x.txt"), "data.train")
    with pytest.raises(UserError, match="no .csv or .parquet files"):
        sources.resolve(str(tmp_path / "*.json"), "data.test")


def test_csv_missing_values_and_column_types(tmp_path):
    path = tmp_path / "d.csv"
    # n is whole-numbered at first, then a decimal; code is numbers read as a category
    path.write_text("n,s,code,label\n1,a,7,1\nNA,NA,8,0\n3.5,,9,1\n")
    src = sources.resolve(str(path), "data.train")
    schema = sources.read_schema(src)
    types = sources.column_types({"n": "numeric", "s": "categorical", "code": "categorical"}, "label",
                                 schema.field("label").type)
    assert types == {"n": pa.float64(), "s": pa.string(), "code": pa.string(), "label": pa.int64()}
    table = sources.read_table(src, types)
    assert table.column("n").to_pylist() == [1.0, None, 3.5]
    assert table.column("s").null_count == 2  # "NA" and "" are missing, not text
    assert table.column("code").to_pylist() == ["7", "8", "9"]
    assert table.column("label").type == pa.int64()


# ---------------------------------------------------------------- file contents the data step refuses up front


def inspect(tmp_path, train, **sections):
    """The preflight checks of a run on `train` (no Ray)."""
    return inspect_sources(from_dict(penguins_tree(tmp_path, data__train=str(train), **sections), "test"))


def test_duplicate_column_names_are_refused_with_the_file(tmp_path, capsys):
    path = tmp_path / "dup.csv"
    path.write_text("bill,island,bill,species\n1.0,a,2.0,x\n3.0,b,4.0,y\n")
    with pytest.raises(UserError, match=r"data.train: .*dup.csv has 2 columns named 'bill'"):
        sources.read_schema(sources.resolve(str(path), "data.train"))
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(path)))
    assert_bad_input(["train", "--config", str(cfg)], capsys, "data.train", "dup.csv", "'bill'")


def test_duplicate_column_names_in_a_later_file_are_refused(tmp_path):
    (tmp_path / "part-0.csv").write_text("bill,species\n1.0,x\n")
    (tmp_path / "part-1.csv").write_text("bill,species,bill\n1.0,x,2.0\n")
    with pytest.raises(UserError, match=r"data.train: .*part-1.csv has 2 columns named 'bill'"):
        inspect(tmp_path, tmp_path)


def test_parquet_type_drift_between_files_names_the_column_files_and_types(tmp_path, capsys):
    pq.write_table(pa.table({"bill": [1.0, 2.0], "species": ["x", "y"]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"bill": ["3.0", "oops"], "species": ["x", "y"]}), tmp_path / "part-1.parquet")
    with pytest.raises(UserError, match=r"data.train: column 'bill' is double in .*part-0.parquet "
                                        r"but string in .*part-1.parquet"):
        inspect(tmp_path, tmp_path)
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(tmp_path)))
    assert_bad_input(["train", "--config", str(cfg)], capsys, "'bill'", "part-0.parquet", "part-1.parquet")


def test_compatible_parquet_types_and_all_null_parts_are_accepted(tmp_path):
    pq.write_table(pa.table({"bill": pa.array([1, 2], pa.int32()), "island": ["a", "b"], "species": ["x", "y"]}),
                   tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"bill": [1.5, None], "island": pa.array(["a", "b"]).dictionary_encode(),
                             "species": ["x", "y"]}), tmp_path / "part-1.parquet")
    pq.write_table(pa.table({"bill": pa.nulls(2), "island": pa.nulls(2), "species": ["x", "y"]}),
                   tmp_path / "part-2.parquet")
    assert inspect(tmp_path, tmp_path).kinds == {"bill": "numeric", "island": "categorical"}


def test_a_part_without_a_used_column_is_refused(tmp_path):
    pq.write_table(pa.table({"bill": [1.0], "species": ["x"]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"species": ["y"]}), tmp_path / "part-1.parquet")
    with pytest.raises(UserError, match=r"data.train: .*part-1.parquet has no column 'bill'"):
        inspect(tmp_path, tmp_path)


def test_a_column_named_like_an_internal_one_is_refused(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text(f"bill,{SPLIT_COLUMN},species\n1.0,0,x\n")
    with pytest.raises(UserError, match=rf"data.train \(.*d.csv\): column '{SPLIT_COLUMN}' .*reserves"):
        inspect(tmp_path, path)
    with pytest.raises(UserError, match=rf"column '{SPLIT_COLUMN}'"):  # even when it is not a feature
        inspect(tmp_path, path, data__drop=[SPLIT_COLUMN])
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(path)))
    assert_bad_input(["train", "--config", str(cfg)], capsys, "data.train", SPLIT_COLUMN)


def test_a_column_empty_in_the_first_part_takes_its_type_from_a_later_part(tmp_path):
    pq.write_table(pa.table({"bill": [1.0, 2.0], "island": pa.nulls(2, pa.null()), "species": ["x", "y"]}),
                   tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"bill": [3.0, 4.0], "island": ["a", "b"], "species": ["x", "y"]}),
                   tmp_path / "part-1.parquet")
    inputs = inspect(tmp_path, tmp_path)
    assert inputs.kinds == {"bill": "numeric", "island": "categorical"}  # not numbers, as part-0 alone says


def test_a_test_source_must_store_numeric_features_as_numbers(tmp_path):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    pq.write_table(pa.table({"bill": [1.0, 2.0], "island": ["a", "b"], "species": ["x", "y"]}), train)
    pq.write_table(pa.table({"bill": ["3.0", "4.0"], "island": [1, 2], "species": ["x", "y"]}), test)
    with pytest.raises(UserError, match=r"data.test: column 'bill' is string in .*test.parquet, but number in "
                                        r"data.train; store it as number"):
        inspect(tmp_path, train, data__test=str(test))
    pq.write_table(pa.table({"bill": [3, 4], "island": [1, 2], "species": ["x", "y"]}), test)
    assert inspect(tmp_path, train, data__test=str(test)).test is not None  # categories may be numbers


def test_a_csv_value_that_does_not_parse_names_the_file_and_column(tmp_path):
    (tmp_path / "part-0.csv").write_text("species,bill\nx,1.0\n")
    (tmp_path / "part-1.csv").write_text("species,bill\nx,2.0\ny,oops\n")
    src = sources.resolve(str(tmp_path), "data.train")
    with pytest.raises(UserError, match=r"data.train: cannot read .*part-1.csv: column 'bill' holds 'oops', "
                                        r"which is not a number"):
        sources.read_table(src, {"species": pa.string(), "bill": pa.float64()})
