"""`serve` on a real Ray Serve over loopback HTTP: predictions, bad requests, a rolling
update to another checkpoint from the real CLI, and a killed replica."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch

from app.config import ModelConfig
from app.data.preprocess import fit_numeric_scaling
from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState, transform
from app.errors import UserError
from app.model import build_model, member_loss
from app.predictor import Predictor
from app.training import checkpoint as ckpt
from tests.conftest import PENGUINS, REPO, _free_port

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
CATEGORICAL = ["island", "sex"]
MAX_ROWS, MAX_BODY_MB = 100, 0.04  # small limits, so that passing them costs little
MAX_BODY = int(MAX_BODY_MB * 2**20)


def penguins_checkpoint(directory: Path, seed: int, epoch: int, kind: str = "tabm") -> Path:
    """A real checkpoint of a penguins model (weights from `seed`), fitted with a few
    full-batch steps so that its predictions differ from row to row."""
    df = pd.read_csv(PENGUINS)
    state = PreprocessState(
        label="species", task="classification",
        numeric=[NumericColumn(c, float(df[c].mean()), float(df[c].std()), bool(df[c].isna().any()))
                 for c in NUMERIC],
        categorical=[CategoricalColumn(c, sorted(df[c].dropna().unique().tolist())) for c in CATEGORICAL],
        classes=sorted(df["species"].unique().tolist()),
        input_types={**{c: "double" for c in NUMERIC}, "year": "int64", "island": "string", "sex": "string"})
    fit_numeric_scaling(state, df[NUMERIC], "quantile", n_bins=16)  # quantiles, and bins for tabm
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=kind, hidden=[16], k=4, d_block=32)
    model = build_model(cfg, state)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    arrays = {k: torch.from_numpy(v) for k, v in transform(df, state).items()}
    for _ in range(5):
        out = model.train()(arrays["x_num"], arrays["x_cat"])
        loss = member_loss(torch.nn.CrossEntropyLoss(), out, arrays["y"], model.members)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ckpt.write_checkpoint(directory, model=model, optimizer=opt, scheduler=sched, state=state,
                                 model_cfg=cfg, train_state={"epoch": epoch, "progress": {}})


def records_of(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON records, NaN as null."""
    return json.loads(df.to_json(orient="records"))


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    from ray import serve

    from app import serve as serving

    tmp = tmp_path_factory.mktemp("serve")
    # The two model kinds: the service first serves a tabm, then rolls over to an mlp.
    first = penguins_checkpoint(tmp / "a", seed=1, epoch=1, kind="tabm")
    second = penguins_checkpoint(tmp / "b", seed=2, epoch=2, kind="mlp")
    options = serving.ServeOptions(replicas=2, max_rows=MAX_ROWS, max_body_bytes=MAX_BODY)
    url = serving.deploy(str(first), options, host="127.0.0.1", port=_free_port())
    yield {"url": url, "first": str(first), "second": str(second), "options": options,
           "address": ray_session.get_runtime_context().gcs_address}
    serve.shutdown()


class Traffic:
    """Clients posting `rows` in a loop until stopped; every outcome kept with its time."""

    def __init__(self, url: str, rows: list[dict], clients: int = 3):
        self.url, self.body, self.outcomes = url, {"records": rows}, []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(clients)]

    def loop(self):
        session = requests.Session()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                r = session.post(f"{self.url}/predict", json=self.body, timeout=60)
                ok = r.status_code == 200 and len(r.json()["predictions"]) == len(self.body["records"])
                self.outcomes.append((started, ok, r.status_code))
            except requests.RequestException as e:
                self.outcomes.append((started, False, repr(e)))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=90)

    def failures(self, since: float = 0.0) -> list:
        return [o for o in self.outcomes if not o[1] and o[0] >= since]


def health_of_replicas(url: str, replicas: int) -> dict[str, dict]:
    """/health answers keyed by replica, polled until every replica has answered."""
    seen: dict[str, dict] = {}
    for _ in range(200):
        h = requests.get(f"{url}/health", timeout=30).json()
        seen[h["replica"]] = h
        if len(seen) == replicas:
            break
    assert len(seen) == replicas, seen
    return seen


def test_predictions_over_http_equal_the_predictors(service):
    url = service["url"]
    df = pd.read_csv(PENGUINS).drop(columns=["species"])
    df.loc[0, "bill_length_mm"] = np.nan  # missing numeric: imputed
    df.loc[1, "island"] = "Atlantis"  # a category never seen: the unknown bucket
    df.loc[2, "sex"] = None
    df["extra"] = "ignored"
    expected = Predictor.from_checkpoint(service["first"]).predict(df)
    assert expected["prediction"].nunique() > 1  # the comparison below can tell rows apart

    # Concurrent requests of different sizes: @serve.batch merges them into shared model calls.
    chunks = np.array_split(np.arange(len(df)), 8)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: requests.post(f"{url}/predict", json={"records": records_of(df.iloc[c])},
                                                        timeout=60), chunks))
    assert [a.status_code for a in answers] == [200] * len(chunks)
    bodies = [a.json() for a in answers]
    assert sum((b["predictions"] for b in bodies), []) == expected["prediction"].tolist()
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    got = np.array([[p[c] for c in classes] for b in bodies for p in b["probabilities"]])
    np.testing.assert_allclose(got, expected[[f"proba_{c}" for c in classes]].to_numpy(), atol=1e-6)

    schema = requests.get(f"{url}/schema", timeout=30).json()
    assert schema["features"] == Predictor.from_checkpoint(service["first"]).schema()["features"]
    assert schema["classes"] == classes and schema["limits"] == {"max_rows": MAX_ROWS, "max_body_bytes": MAX_BODY}


def test_every_bad_request_gets_a_4xx_naming_the_problem(service):
    url = service["url"]
    good = records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:3])
    big = json.dumps({"records": good * 30, "padding": "x" * MAX_BODY}).encode()
    cases = [  # (body, status, fragment of the error)
        (b'{"records": [', 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'{"records": [{"year": NaN}]}', 400, "NaN is not JSON"),
        (b"[1, 2]", 400, '{"records"'),
        (b'{"rows": []}', 400, '{"records"'),
        (b'{"records": {}}', 400, "non-empty list"),
        (b'{"records": []}', 400, "non-empty list"),
        (json.dumps({"records": [good[0], 7]}).encode(), 400, "records[1] is not an object"),
        (json.dumps({"records": good * 34}).encode(), 413, "102 records in one request; the limit is 100"),
        (big, 413, f"over the limit of {MAX_BODY} bytes"),
        (json.dumps({"records": [{k: v for k, v in r.items() if k not in ("sex", "year")} for r in good]}).encode(),
         422, "missing feature column(s): year, sex"),
        (json.dumps({"records": [good[0], {k: v for k, v in good[1].items() if k != "sex"}]}).encode(),
         422, "records[1] lacks feature(s) sex; send null for a missing value"),
        (json.dumps({"records": [good[0], {**good[1], "body_mass_g": "heavy"}]}).encode(),
         422, "column 'body_mass_g', records[1]: got \"heavy\"; expected a number or null"),
        (json.dumps({"records": [{**good[0], "year": True}]}).encode(), 422, "column 'year', records[0]: got true"),
        (('{"records": [' + json.dumps(good[0])[:-1] + ', "bill_length_mm": 1e999}]}').encode(), 422,
         "column 'bill_length_mm', records[0]: a number out of range"),
        (json.dumps({"records": [{**good[0], "island": ["Biscoe"]}]}).encode(), 422,
         "column 'island', records[0]: got [\"Biscoe\"]; expected a string, number, boolean or null"),
    ]
    # The bad requests go in at the same time as good ones: none of the good ones suffers.
    with ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(requests.post, f"{url}/predict", data=body, timeout=60) for body, _, _ in cases]
        fine = [pool.submit(requests.post, f"{url}/predict", json={"records": good}, timeout=60) for _ in cases]
        for (_, status, fragment), answer in zip(cases, bad):
            answer = answer.result()
            assert answer.status_code == status, (fragment, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert fragment in answer.json()["error"], answer.json()
        assert all(f.result().status_code == 200 and len(f.result().json()["predictions"]) == 3 for f in fine)

    assert requests.get(f"{url}/nowhere", timeout=30).status_code == 404
    wrong_method = requests.get(f"{url}/predict", timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "takes POST" in wrong_method.json()["error"]
    assert requests.post(f"{url}/predict", json={"records": good}, timeout=30).status_code == 200


def test_replicas_that_can_never_fit_are_refused(service):
    from app.serve import ServeOptions, check_replicas_fit

    check_replicas_fit(ServeOptions(replicas=8, cpus_per_replica=0.5))  # the session's Ray has 4 CPUs
    with pytest.raises(UserError, match=r"--replicas 5 with --cpus-per-replica 1 can never be scheduled: "
                                        r"the cluster has 4 CPU on 1 node\(s\), room for 4"):
        check_replicas_fit(ServeOptions(replicas=5))


@pytest.mark.slow
def test_serve_again_with_another_checkpoint_updates_without_failed_requests(service, cli_env):
    url = service["url"]
    rows = records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:5])
    with Traffic(url, rows) as traffic:
        time.sleep(1.0)
        done = subprocess.run([sys.executable, "-m", "app", "serve", "--checkpoint", service["second"],
                               "--replicas", "2", "--max-rows", str(MAX_ROWS), "--max-body-mb", str(MAX_BODY_MB),
                               "--address", service["address"]], cwd=REPO, env=cli_env, capture_output=True,
                              text=True, timeout=180)
        time.sleep(1.0)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"updated {url} to {service['second']} (epoch 2) with 2 replica(s)" in done.stdout
    assert len(traffic.outcomes) > 20 and traffic.failures() == []

    answers = health_of_replicas(url, replicas=2)
    assert {(h["checkpoint"], h["epoch"]) for h in answers.values()} == {(service["second"], 2)}
    got = requests.post(f"{url}/predict", json={"records": rows}, timeout=30).json()["probabilities"]
    got = np.array([[p[c] for c in sorted(p)] for p in got])
    new, old = (Predictor.from_checkpoint(service[k]).predict(pd.DataFrame(rows)).filter(like="proba_").to_numpy()
                for k in ("second", "first"))
    np.testing.assert_allclose(got, new, atol=1e-6)
    assert np.abs(got - old).max() > 1e-3  # the two checkpoints tell apart


@pytest.mark.slow
def test_a_killed_replica_is_replaced_while_the_service_answers(service):
    import ray

    from app.serve import replicas

    url = service["url"]
    before = health_of_replicas(url, replicas=2)
    victim = next(iter(before))
    rows = records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:5])
    with Traffic(url, rows) as traffic:
        time.sleep(1.0)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        while True:  # until Serve runs two replicas again, neither of them the killed one
            now = replicas()
            if victim not in now and list(now.values()) == ["RUNNING", "RUNNING"]:
                break
            assert time.monotonic() < killed_at + 60, now
            time.sleep(0.2)
        recovered_at = time.monotonic()
        time.sleep(1.5)
    # Only requests already inside the killed replica may fail (each gets a 500 from Serve's
    # proxy): at most one per client. Everything sent after the replacement is up succeeds.
    assert len(traffic.failures()) <= len(traffic.threads), traffic.failures()
    assert all(code == 500 for _, _, code in traffic.failures())
    assert traffic.failures(since=recovered_at) == []
    assert len([o for o in traffic.outcomes if killed_at < o[0] < recovered_at and o[1]]) > 10  # it kept answering
    after = health_of_replicas(url, replicas=2)
    assert victim not in after and len(after) == 2
