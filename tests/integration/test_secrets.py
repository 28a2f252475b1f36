"""A credential inside a URI never leaves the process: a real `train` (in this process, on
the shared Ray) with a password in `tracking.mlflow_uri` leaves it in no file and no line of
output. The tracking server there is down: the run warns once and trains without MLflow."""

from __future__ import annotations

import json
import uuid

import yaml

from app.cli import main
from tests.conftest import _free_port, penguins_tree


def test_a_password_in_a_uri_reaches_no_file_and_no_output(ray_session, tmp_path, capfd):
    secret = f"pw-{uuid.uuid4().hex}"
    port = _free_port()  # nothing listens there
    tree = penguins_tree(tmp_path, train__epochs=1, scaling__num_workers=1, tracking__mlflow=True,
                         tracking__mlflow_uri=f"http://app:{secret}@127.0.0.1:{port}")
    config = tmp_path / "secret.yaml"
    config.write_text(yaml.safe_dump(tree))

    assert main(["train", "--config", str(config)]) == 0
    out, err = capfd.readouterr()
    run = tmp_path / "runs" / "quickstart"
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 1

    assert secret not in out + err
    warnings = [line for line in err.splitlines() if "MLflow" in line]
    expected = f"warning: MLflow logging is off: http://app:***@127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}"
    assert warnings == [f"{expected} (ConnectionError)"], err[-3000:]

    # The URI was written, redacted: to config.yaml and to every checkpoint's train state.
    redacted = f"http://app:***@127.0.0.1:{port}"
    assert yaml.safe_load((run / "config.yaml").read_text())["tracking"]["mlflow_uri"] == redacted
    checkpoints = sorted(run.glob("checkpoint_epoch_*"))
    assert checkpoints
    for checkpoint in checkpoints:
        assert json.loads((checkpoint / "train_state.json").read_text())["config"]["tracking"]["mlflow_uri"] == redacted
    # train.log keeps what was printed, redacted as it was; output that is no terminal has no progress bars
    logged = (run / "train.log").read_text()
    assert f"{expected} (ConnectionError)\n" in logged and "epoch 1/1 " in logged
    assert "\r" not in out + err + logged
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != config]
    assert len(written) >= 8
    leaks = [str(p.relative_to(tmp_path)) for p in written if secret.encode() in p.read_bytes()]
    assert not leaks
