"""One scoring path whatever the input: the same rows written as CSV, as Parquet (with
their values stored as several kinds of Arrow types), sent as JSON to the server's parser,
given as a DataFrame to the Python API, and read by the exported `predict.py`, get the
same predictions; a word in a numeric feature gets the same message from each. No Ray:
each path is the function that the command runs per block (`predict`'s tasks read a
piece with `sources.read_piece` and score it with `Predictor.prediction_columns`)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import checkpoint as ckpt
from app import serve
from app.api import Model
from app.config import ModelConfig, from_dict
from app.data import sources
from app.data.prepare import _two_passes, inspect_sources
from app.data.transform import BadValue
from app.errors import UserError
from app.model import build_model
from app.predictor import Predictor, check_input, read_types

FEATURES = ["flag", "code", "word", "x"]
FLAGS = [True, False, None]
CODES = [7, 12, 0, 3, None]  # 3: never seen in training
WORDS = ["apple", "None", "007", "7", "inf", "x y", "true", "banana", "NA", "", None]


def training_table(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "flag": pd.Series(rng.choice([True, False, None], n), dtype=object),
        "code": pd.Series(rng.choice([7, 12, 0, None], n), dtype=object),
        "word": pd.Series(rng.choice(["apple", "None", "007", "inf", "x y", "true", None], n), dtype=object),
        "x": rng.normal(size=n).round(3),
        "y": rng.choice(["p", "q", "r"], n),
    })


def fitted_checkpoint(folder: Path, table: pd.DataFrame, label: str, **data) -> Path:
    """A checkpoint whose preprocessing is fitted by the training data step on `table`
    written as CSV, with a network of random weights (no training, no Ray): every category
    moves the outputs, so a value looked up wrongly shows."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "train.csv", index=False)
    cfg = from_dict({"name": "scoring", "data": {"train": str(folder / "train.csv"), "label": label, **data},
                     "run": {"storage": str(folder / "runs")}}, "test")
    inputs = inspect_sources(cfg)
    pieces = sources.plan_pieces(inputs.train, inputs.column_types, math.inf)
    state, _ = _two_passes(cfg, inputs, pieces, None, here=True, bins=False)
    torch.manual_seed(0)
    model_cfg = ModelConfig(kind="mlp", hidden=[16])
    net = build_model(model_cfg, state)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 1)
    opt = torch.optim.AdamW(net.parameters())
    return ckpt.write_checkpoint(folder / "checkpoint", model=net, optimizer=opt,
                                 scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0), state=state,
                                 model_cfg=model_cfg, train_state={"epoch": 1, "progress": {}})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A classification checkpoint fitted on a CSV file (`code` declared categorical), and its export."""
    tmp = tmp_path_factory.mktemp("scoring")
    path = fitted_checkpoint(tmp, training_table(), "y", categorical=["code"])
    from app.export import export

    exported = export(str(path), str(tmp / "exported"))
    return {"checkpoint": str(path), "predictor": Predictor.from_checkpoint(path), "tmp": tmp,
            "exported": load_exported(exported)}


def load_exported(folder: Path):
    """The exported folder's `predict` module, as `python predict.py` runs it (its own
    `preprocess` module beside it, not the app's)."""
    sys.modules.pop("preprocess", None)
    spec = importlib.util.spec_from_file_location("exported_predict", folder / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop("preprocess", None)
    return module, module.Model(folder)


def test_categories_are_stored_in_one_canonical_form(model):
    cats = {c.name: c.categories for c in model["predictor"].state.categorical}
    assert cats["flag"] == ["False", "True", "__missing__"]  # CSV text True/False
    assert cats["code"] == ["0", "12", "7", "__missing__"]
    assert "7" in cats["word"] and "007" not in cats["word"] and "True" in cats["word"] and "None" in cats["word"]


def rows_strategy():
    row = st.fixed_dictionaries({"flag": st.sampled_from(FLAGS), "code": st.sampled_from(CODES),
                                 "word": st.sampled_from(WORDS),
                                 "x": st.one_of(st.none(), st.integers(-5, 5),
                                                st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 3)))})
    return st.lists(row, min_size=1, max_size=12)


def parquet_table(df: pd.DataFrame, flag_as: str, code_as: str) -> pa.Table:
    """The rows as Parquet writers store them: `flag` as booleans or as the texts
    true/false, `code` as integers, floats, texts or a dictionary of texts."""
    flag = pa.array(df["flag"].tolist(), pa.bool_())
    if flag_as == "text":
        flag = pa.array([None if v is None else str(v).lower() for v in df["flag"]], pa.string())
    codes = df["code"].tolist()
    code = {"int": pa.array(codes, pa.int64()), "float": pa.array([None if v is None else float(v) for v in codes]),
            "text": pa.array([None if v is None else f"{v:03d}" for v in codes], pa.string())}.get(code_as)
    if code is None:
        code = pa.array([None if v is None else str(v) for v in codes], pa.string()).dictionary_encode()
    x = pa.array([None if v is None else float(v) for v in df["x"]], pa.float64())
    return pa.table({"flag": flag, "code": code, "word": pa.array(df["word"].tolist(), pa.string()), "x": x})


def app_read(path: Path, predictor: Predictor) -> pd.DataFrame:
    """A file as each `predict` task reads and scores it."""
    source = check_input(predictor, str(path), "--input", need_label=False)
    table = sources.read_table(source, read_types(predictor.state))
    return table.select(predictor.state.features).to_pandas()


def probabilities(columns: dict, predictor: Predictor) -> np.ndarray:
    return np.column_stack([columns[f"proba_{c}"] for c in predictor.state.classes])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy(), flag_as=st.sampled_from(["bool", "text"]),
       code_as=st.sampled_from(["int", "float", "text", "dictionary"]))
def test_the_same_rows_get_the_same_predictions_from_every_input(model, tmp_path, rows, flag_as, code_as):
    predictor, tmp = model["predictor"], tmp_path
    df = pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in FEATURES})
    df.to_csv(tmp / "in.csv", index=False)
    pq.write_table(parquet_table(df, flag_as, code_as), tmp / "in.parquet")
    expected = probabilities(predictor.prediction_columns(app_read(tmp / "in.csv", predictor)), predictor)

    got = {
        "parquet": app_read(tmp / "in.parquet", predictor),
        "api": df,  # app.load_model(...).predict_proba takes the DataFrame as it is
        "json": pd.DataFrame(serve.parse_records(json.dumps({"records": rows}).encode(), predictor.state, 100)),
    }
    for name, frame in got.items():
        assert np.array_equal(probabilities(predictor.prediction_columns(frame), predictor), expected), name
    api = Model(predictor, model["checkpoint"]).predict_proba(df)
    assert np.array_equal(api.to_numpy(), expected)

    module, exported = model["exported"]
    for name, frame in {"export csv": module.read_csv(str(tmp / "in.csv"), exported.state),
                        "export parquet": pd.read_parquet(tmp / "in.parquet")}.items():
        out = exported.predict(frame)
        np.testing.assert_allclose(out[[f"proba_{c}" for c in predictor.state.classes]].to_numpy(), expected,
                                   atol=1e-5, err_msg=name)


def test_a_word_in_a_numeric_feature_is_refused_alike_from_every_input(model, tmp_path):
    predictor = model["predictor"]
    df = pd.DataFrame({"flag": [True, False], "code": [7, 12], "word": ["apple", "x y"], "x": ["1.5", "heavy"]})
    said = "column 'x' holds 'heavy', which is not a number"
    df.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(UserError, match=f"in.csv: {said}$"):
        app_read(tmp_path / "in.csv", predictor)
    df.to_parquet(tmp_path / "in.parquet")  # x stored as text: read as it is, refused when scored
    with pytest.raises(BadValue, match=f"^{said}$"):
        predictor.prediction_columns(app_read(tmp_path / "in.parquet", predictor))
    with pytest.raises(UserError, match=f"^input: {said}$"):
        Model(predictor, model["checkpoint"]).predict(df)
    with pytest.raises(serve.BadRequest, match=said):
        serve.parse_records(json.dumps({"records": df.to_dict("records")}).encode(), predictor.state, 100)
    module, exported = model["exported"]  # (its own copy of the BadValue class)
    with pytest.raises(module.BadValue, match=f"^{said}$"):
        module.read_csv(str(tmp_path / "in.csv"), exported.state)
    with pytest.raises(module.BadValue, match=f"^{said}$"):
        exported.predict(pd.read_parquet(tmp_path / "in.parquet"))
    # A CSV reader's missing markers are missing values, not words, in every format
    df["x"] = ["NA", None]
    assert np.isnan(predictor.outputs(df)).sum() == 0


def test_columns_the_model_does_not_read_pass_through_as_written(model, tmp_path):
    """A pass-through column that is whole numbers for more than the first block that
    types a CSV column and text after it, and the label of the training data, are read as
    text: no error, and `01000` stays `01000`."""
    predictor = model["predictor"]
    n = 120_000  # more than 1 MiB of lines before the first word
    df = pd.DataFrame({"id": [f"{i:05d}" for i in range(n)], "flag": [True] * n, "code": [7] * n,
                       "word": ["apple"] * n, "x": np.arange(n) / 7, "y": ["p"] * n})
    df.loc[n - 1, "id"] = "a note"
    df.loc[n - 2, "y"] = "1.5"
    df.to_csv(tmp_path / "in.csv", index=False)
    source = check_input(predictor, str(tmp_path / "in.csv"), "--input", need_label=False)
    table = sources.read_table(source, read_types(predictor.state))
    assert table.column("id").to_pylist()[:3] == ["00000", "00001", "00002"]
    assert table.column("id")[n - 1].as_py() == "a note" and table.column("y")[n - 2].as_py() == "1.5"


def test_input_columns_named_like_the_apps_own_are_refused_and_replaced_ones_named(model, tmp_path, caplog):
    predictor = model["predictor"]
    df = pd.DataFrame({"flag": [True], "code": [7], "word": ["apple"], "x": [1.0]})
    df.assign(__app_piece=1).to_csv(tmp_path / "reserved.csv", index=False)
    with pytest.raises(UserError, match="column '__app_piece' has a name the app reserves"):
        check_input(predictor, str(tmp_path / "reserved.csv"), "--input", need_label=False)
    df.assign(prediction="old", proba_p=0.5).to_csv(tmp_path / "again.csv", index=False)
    check_input(predictor, str(tmp_path / "again.csv"), "--input", need_label=False)
    assert "has column(s) prediction, proba_p: the output replaces them" in caplog.text


def test_the_exported_command_says_what_is_wrong_in_one_line(model, tmp_path, capsys):
    module, _ = model["exported"]
    pd.DataFrame({"flag": [True], "code": [7], "x": [1.0]}).to_csv(tmp_path / "no_word.csv", index=False)
    pd.DataFrame({"flag": [True], "code": [7], "word": ["a"], "x": ["heavy"]}).to_csv(tmp_path / "word.csv", index=False)
    assert module.main([str(tmp_path / "no_word.csv"), str(tmp_path / "out.csv")]) == 2
    assert module.main([str(tmp_path / "word.csv"), str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {tmp_path / 'no_word.csv'}: missing feature column(s): word (the model reads: x, flag, code, word)",
                   f"error: {tmp_path / 'word.csv'}: column 'x' holds 'heavy', which is not a number"]
    assert not (tmp_path / "out.csv").exists()
