"""The library in a fresh Python process, as a notebook uses it: with no Ray started (the
first call starts one and keeps it for the next), and with the user's own `ray.init()`
without a dashboard. Each in its own process: the integration tests' shared Ray would
hide both."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import PENGUINS

pytestmark = pytest.mark.slow

PROGRAM = textwrap.dedent("""
    import json, os, sys
    import pandas as pd
    import ray
    import app

    if sys.argv[2] == "own-ray":
        ray.init(num_cpus=2, include_dashboard=False)
    import sklearn, torch  # (scikit-learn sets two KMP_ variables as it is imported: not ours to put back)
    before = dict(os.environ)
    df = pd.read_csv({penguins!r})
    tree = {{"name": "nb", "data": {{"train": df, "label": "species"}}, "train": {{"epochs": 2}},
            "run": {{"storage": sys.argv[1]}}, "tracking": {{"mlflow": False, "tensorboard": False}}}}
    first = app.train(tree)
    second = app.train(dict(tree, name="nb2", model={{"kind": "mlp"}}))
    print("RESULT " + json.dumps({{
        "ray_up": ray.is_initialized(),
        "env_changed": sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)),
        "ray_start_s": [first.metrics["timings"]["ray_start_s"], second.metrics["timings"]["ray_start_s"]],
        "accuracy": [first.metrics["test"]["accuracy"], second.metrics["test"]["accuracy"]],
    }}))
""")


@pytest.mark.parametrize("ray_mode", ["no-ray", "own-ray"])
def test_a_notebook_session(tmp_path, cli_env, ray_mode):
    program = tmp_path / "notebook.py"
    program.write_text(PROGRAM.format(penguins=str(PENGUINS)))
    done = subprocess.run([sys.executable, str(program), str(tmp_path / "runs"), ray_mode], cwd=tmp_path,
                          env=cli_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["ray_up"]
    if ray_mode == "no-ray":  # started by the first call, reused by the second
        assert result["ray_start_s"][0] > 0 and result["ray_start_s"][1] is None
        # what ray.init() itself sets as it starts a local Ray; nothing of ours stays
        assert set(result["env_changed"]) <= {"RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "PYTHONBREAKPOINT"}
    else:
        assert result["ray_start_s"] == [None, None]
        assert result["env_changed"] == []
    majority = 152 / 344  # Adelie
    assert all(a > majority for a in result["accuracy"])
    # the app logger's lines are shown by default, as the command line shows them
    assert "data.train: DataFrame of 344 rows saved to" in done.stdout
    assert "run folder:" in done.stdout
    # a Ray without a dashboard has no state API: Ray Train's cleaner that polls it is left out
    assert "Failed to query Ray Train Controller actor state" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
