"""After training: batch predict, evaluate, baselines, tracking, report and export, on a real Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import app
from app import cluster, storage
from app.config import from_dict
from app.evaluating import run_evaluate
from app.predicting import check_output, part_records, run_predict
from app.predictor import Predictor, check_input
from app.report import write_report
from tests.conftest import PENGUINS, penguins_tree
from tests.drills import run_export

EPOCHS = 3


@pytest.fixture(scope="module", params=["tabm", "mlp"])  # xgboost: tests/integration/test_boosting.py
def run(request, ray_session, tmp_path_factory):
    """A finished penguins run of each model kind with a held-out test file and baselines;
    the tabm run also logs to MLflow and TensorBoard, the mlp run has tracking off."""
    tmp = tmp_path_factory.mktemp(f"inference-{request.param}")
    rows = pd.read_csv(PENGUINS).sample(frac=1.0, random_state=0)
    rows.iloc[:260].to_csv(tmp / "train.csv", index=False)
    rows.iloc[260:].to_csv(tmp / "test.csv", index=False)
    tree = penguins_tree(tmp, data__train=str(tmp / "train.csv"), data__test=str(tmp / "test.csv"),
                         train__epochs=EPOCHS, report__baselines=True, model__kind=request.param,
                         tracking__mlflow=request.param == "tabm", tracking__tensorboard=request.param == "tabm")
    cfg = from_dict(tree, "test")
    metrics = app.train(cfg).metrics
    return {"tmp": tmp, "cfg": cfg, "metrics": metrics, "dir": tmp / "runs" / cfg.name,
            "checkpoint": metrics["best_checkpoint"], "test": rows.iloc[260:]}


def test_predict_matches_predictor_in_input_order_across_files(run, monkeypatch):
    tmp, test = run["tmp"], run["test"].drop(columns=["species"]).reset_index(drop=True)
    test.insert(0, "row_id", np.arange(len(test)))  # an extra column: passed through
    test.loc[0, "bill_length_mm"] = np.nan  # missing numeric
    test.loc[1, "island"] = "Atlantis"  # a category never seen in training
    test.loc[2, "sex"] = None
    files = np.array_split(np.arange(len(test)), 3)
    test.insert(1, "note", None)  # text in the first file only: the others read it as null
    test.loc[files[0], "note"] = "x"
    folder = tmp / "to_score"
    folder.mkdir()
    for i, part in enumerate(files):
        test.iloc[part].to_csv(folder / f"part-{i}.csv", index=False)
    predictor = Predictor.from_checkpoint(run["checkpoint"])
    expected = predictor.predict(test)

    source = check_input(predictor, str(folder), "--input", need_label=False)
    starts = np.cumsum([0, *map(len, files)])[:-1]
    for output in (tmp / "scored.parquet", tmp / "scored_parts", tmp / "scored_here"):
        if output.name == "scored_here":  # as on a cluster whose other nodes cannot see the folder
            monkeypatch.setattr(cluster, "blind_nodes", lambda location: (["10.0.0.2 (node 0000)"], 2))
        rows = run_predict(run["checkpoint"], predictor, source, check_output(str(output), False),
                           batch_size=16, concurrency=2)
        assert rows == len(test)
        got = pq.read_table(output).to_pandas() if output.suffix else \
            pd.concat(pd.read_parquet(p) for p in sorted(output.glob("part-*.parquet")))
        got = got.reset_index(drop=True)
        assert got["row_id"].tolist() == [str(i) for i in range(len(test))]  # input order, extra columns kept as text
        assert got["note"].fillna("-").tolist() == test["note"].fillna("-").tolist()
        if not output.suffix:  # each file's rows in their own part, in one schema
            parts = sorted(output.glob("part-*.parquet"))
            assert [p.name for p in parts] == ([f"part-0000{i}-000000000000.parquet" for i in range(3)]
                                               if output.name == "scored_parts" else  # by the task that scored them
                                               [f"part-00000-{row:012d}.parquet" for row in starts])  # by the driver
            assert [pq.read_metadata(p).num_rows for p in parts] == list(map(len, files))
            assert len({pq.read_schema(p) for p in parts}) == 1 and pq.read_schema(parts[0]).field("note").type == "string"
        assert list(got.columns[:len(test.columns)]) == list(test.columns)
        assert got["prediction"].tolist() == expected["prediction"].tolist()
        proba = got[[f"proba_{c}" for c in predictor.state.classes]].to_numpy()
        np.testing.assert_allclose(proba, expected[[f"proba_{c}" for c in predictor.state.classes]], atol=1e-6)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert not list(tmp.glob(".scored*"))  # no staging files left behind

    # Reading a file and scoring it run as one task per file: raw rows never go through
    # the object store, and each CPU reads what it scores.
    from app.data.sources import read_dataset
    from app.predictor import predict_dataset, read_types

    ds = read_dataset(source, read_types(predictor.state), concurrency=2)
    stats = predict_dataset(run["checkpoint"], ds, concurrency=2, batch_size=16).materialize().stats()
    assert "ReadCSV->MapBatches(_predict_block): 3 tasks executed" in stats, stats
    # and for a folder, writing too: each block is written by the task that read and scored it
    ds = read_dataset(source, read_types(predictor.state), concurrency=2, origin=True)
    (tmp / "fused").mkdir()
    records = part_records(predict_dataset(run["checkpoint"], ds, concurrency=2, batch_size=16),
                           *storage.filesystem(str(tmp / "fused")), width=5, concurrency=2).materialize()
    assert "ReadCSV->MapBatches(_predict_block)->MapBatches(_write_block): 3 tasks executed" in records.stats()
    assert records.sum("rows") == len(test)

    as_parquet = tmp / "to_score.parquet"  # the same rows from Parquet: the same predictions
    test.to_parquet(as_parquet, index=False)
    run_predict(run["checkpoint"], predictor, check_input(predictor, str(as_parquet), "--input", need_label=False),
                check_output(str(tmp / "from_parquet.csv"), False), batch_size=64, concurrency=1)
    assert pd.read_csv(tmp / "from_parquet.csv")["prediction"].tolist() == expected["prediction"].tolist()


def test_evaluate_equals_the_test_metrics_of_the_run(run):
    predictor = Predictor.from_checkpoint(run["checkpoint"])
    test_file = str(run["tmp"] / "test.csv")
    result = run_evaluate(run["checkpoint"], predictor, check_input(predictor, test_file, "--data", need_label=True))
    assert result["metrics"] == pytest.approx(run["metrics"]["test"], rel=1e-9)
    matrix = np.array(result["confusion_matrix"]["matrix"])
    assert result["confusion_matrix"]["labels"] == predictor.state.classes
    assert matrix.sum() == result["rows"] == len(run["test"])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["metrics"]["accuracy"])
    assert run["metrics"]["test_details"]["confusion_matrix"] == result["confusion_matrix"]


def test_predict_and_evaluate_commands(run, tmp_path, capsys):
    """`predict` and `evaluate` as the command line runs them (`app.cli.main`), from the
    best checkpoint alone, on every row of the penguins file."""
    from app.cli import main

    ckpt = run["checkpoint"]
    assert main(["predict", "--checkpoint", ckpt, "--input", str(PENGUINS), "--output",
                 str(tmp_path / "scored.csv")]) == 0
    rows, out = pd.read_csv(PENGUINS), pd.read_csv(tmp_path / "scored.csv")
    assert len(out) == len(rows) and out["bill_length_mm"].equals(rows["bill_length_mm"])
    assert set(out["prediction"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(PENGUINS), "--output",
                 str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["rows"] == len(rows)
    assert result["metrics"]["accuracy"] == pytest.approx((out["prediction"] == rows["species"]).mean())
    assert "confusion matrix" in capsys.readouterr().out


def test_baselines_are_scored_on_the_same_test_rows(run):
    baselines = json.loads((run["dir"] / "baselines.json").read_text())
    assert set(baselines) == {"random_forest", "hist_gradient_boosting"}
    for result in baselines.values():
        assert result["train_rows"] == run["metrics"]["rows"]["train"]
        for split in ("valid", "test"):
            assert set(result[split]) == {"accuracy", "f1_macro", "roc_auc", "log_loss"}
            assert 0.8 < result[split]["accuracy"] <= 1.0  # penguins are easy for trees


def test_mlflow_and_tensorboard_have_every_epoch(run):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not run["cfg"].tracking.mlflow:  # tracking off: nothing written for it
        assert not (run["tmp"] / "runs" / "mlflow.db").exists() and not (run["dir"] / "tensorboard").exists()
        return
    client = MlflowClient(f"sqlite:///{run['tmp'] / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(run["cfg"].name)
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED"
    history = client.get_metric_history(mlflow_run.info.run_id, "valid_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, EPOCHS + 1))
    by_epoch = {r["epoch"]: r["valid_loss"] for r in run["metrics"]["history"]}
    assert all(m.value == pytest.approx(by_epoch[m.step]) for m in history)
    assert mlflow_run.data.metrics["test_accuracy"] == pytest.approx(run["metrics"]["test"]["accuracy"])
    assert mlflow_run.data.params["model.hidden"] == str(run["cfg"].model.hidden)

    events = EventAccumulator(str(run["dir"] / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == list(range(1, EPOCHS + 1))


def test_mlflow_pyfunc_model_predicts_as_the_predictor(run, monkeypatch):
    """The model the run logged to MLflow, loaded as MLflow loads any pyfunc model, gives
    the app's predictions on the same rows."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    if not run["cfg"].tracking.mlflow:
        return
    uri = f"sqlite:///{run['tmp'] / 'runs' / 'mlflow.db'}"
    (mlflow_run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name(run["cfg"].name).experiment_id])
    assert {a.path for a in MlflowClient(uri).list_artifacts(mlflow_run.info.run_id)} >= {"config.yaml"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    model = mlflow.pyfunc.load_model(f"runs:/{mlflow_run.info.run_id}/model")
    rows = run["test"].drop(columns=["species"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(model.predict(rows), Predictor.from_checkpoint(run["checkpoint"]).predict(rows))


def test_report_renders_in_a_browser(run, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("Debian's chromium package is not installed")
    report = write_report(str(run["dir"]))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", f"file://{report}"], capture_output=True, text=True,
                         timeout=120).stdout
    for text in ("Learning curves", "Confusion matrix", "Feature importance", "random_forest",
                 "hist_gradient_boosting", "<h2>Data</h2>", "Per-class metrics", "ROC and precision-recall curves",
                 "Calibration (test split)", "Label balance on the test split", "missing in training"):
        assert text in dom
    for label in run["metrics"]["test_details"]["confusion_matrix"]["labels"]:  # a per-class row each
        assert f'<td class="left">{label}</td>' in dom
    # the curves, the matrix, ROC + PR, the reliability diagram, the importance bars
    assert dom.count("data:image/png;base64,") == 5
    if run["cfg"].tracking.mlflow:  # `report` added the page to the run's MLflow run
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{run['tmp'] / 'runs' / 'mlflow.db'}")
        (mlflow_run,) = client.search_runs([client.get_experiment_by_name(run["cfg"].name).experiment_id])
        assert "report.html" in {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1100,2200", f"--screenshot={shot}", f"file://{report}"],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    # The plots decoded and were drawn: matplotlib's first line colour (#1f77b4) is on screen.
    blue = np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=2) < 0.06
    assert blue.sum() > 200


def test_export_predicts_like_the_checkpoint_without_ray_or_torch(run, tmp_path):
    from app.export import export

    folder = export(run["checkpoint"], str(tmp_path / "exported"))
    rows = run["test"].drop(columns=["species"])
    rows.to_csv(tmp_path / "in.csv", index=False)
    done = run_export(folder, tmp_path / "in.csv", tmp_path / "out.csv", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = pd.read_csv(tmp_path / "out.csv")
    expected = Predictor.from_checkpoint(run["checkpoint"]).predict(pd.read_csv(tmp_path / "in.csv"))
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    columns = [c for c in expected.columns if c.startswith("proba_")]
    np.testing.assert_allclose(got[columns].to_numpy(), expected[columns].to_numpy(), atol=1e-5)

    # The TorchScript file is the same network: probabilities from the prepared arrays.
    import torch

    from app.data.transform import transform

    scripted = torch.jit.load(str(folder / "model_torchscript.pt"))
    predictor = Predictor.from_checkpoint(run["checkpoint"])
    arrays = transform(rows, predictor.state, with_label=False)
    with torch.no_grad():
        proba = scripted(torch.from_numpy(arrays["x_num"]), torch.from_numpy(arrays["x_cat"])).numpy()
    np.testing.assert_allclose(proba, expected[columns].to_numpy(), atol=1e-5)


def test_each_kind_beats_the_majority_class(run):
    majority = run["test"]["species"].value_counts(normalize=True).max()
    assert run["metrics"]["test"]["accuracy"] > majority + 0.1  # a constant model would score `majority`
