"""Data, checkpoints and predictions on S3: a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import app
from app import storage
from app.config import from_dict
from app.predicting import check_output, run_predict
from app.predictor import Predictor, check_input
from app.report import write_report
from tests.conftest import PENGUINS, penguins_tree


def test_train_and_predict_with_everything_on_s3(ray_session, s3, tmp_path):
    fs, _ = pafs.FileSystem.from_uri(s3)
    bucket = s3.removeprefix("s3://")
    with fs.open_output_stream(f"{bucket}/data/penguins.csv") as f:
        f.write(PENGUINS.read_bytes())
    tree = penguins_tree(tmp_path, data__train=f"{s3}/data/penguins.csv", run__storage=f"{s3}/runs",
                         train__epochs=2, scaling__num_workers=1, tracking__tensorboard=True)
    metrics = app.train(from_dict(tree, "test")).metrics

    run = f"{bucket}/runs/quickstart"
    best = metrics["best_checkpoint"]
    assert best.startswith(f"{s3}/runs/quickstart/checkpoint_epoch_000")
    with fs.open_input_stream(f"{run}/metrics.json") as f:
        assert json.loads(f.read())["epochs_completed"] == 2
    names = {i.path.removeprefix(f"{run}/") for i in fs.get_file_info(pafs.FileSelector(run, recursive=True))}
    assert {"config.yaml", f"{best.rsplit('/', 1)[1]}/manifest.json"} <= names
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)  # copied up each epoch

    predictor = Predictor.from_checkpoint(best)  # from S3 alone
    expected = predictor.predict(pd.read_csv(PENGUINS))
    source = check_input(predictor, f"{s3}/data/penguins.csv", "--input", need_label=False)
    for output in (f"{s3}/scored/one.parquet", f"{s3}/scored/parts"):
        assert run_predict(best, predictor, source, check_output(output, False), batch_size=64, concurrency=1) == 344
    with fs.open_input_file(f"{bucket}/scored/one.parquet") as f:
        assert pq.read_table(f)["prediction"].to_pylist() == expected["prediction"].tolist()
    parts = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/scored/parts"))}
    assert parts == {"part-00000-000000000000.parquet", "_SUCCESS", storage.OWNED}  # _SUCCESS last; the app's marker
    assert sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/scored"))) == \
        ["one.parquet", "parts"]  # no staging copies left beside them

    assert write_report(f"{s3}/runs/quickstart") == f"{s3}/runs/quickstart/report.html"
    assert fs.get_file_info(f"{run}/report.html").size > 10_000
