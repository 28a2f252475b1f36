import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.data import sources
from app.errors import UserError


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
