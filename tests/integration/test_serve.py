"""`serve` on a real Ray Serve over loopback HTTP: predictions, bad requests (refused
before they cost anything: token, content type, size, parse budget), a 500 that names its
request, a rolling update to another checkpoint from the real CLI, and a killed replica."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import ModelConfig
from app.data.preprocess import fit_numeric_scaling
from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState, transform
from app.errors import UserError
from app.model import build_model, member_loss
from app.predictor import Predictor
from app import checkpoint as ckpt
from tests.conftest import PENGUINS, REPO, _free_port
from tests.unit.test_cli_errors import assert_bad_input

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
CATEGORICAL = ["island", "sex"]
MAX_ROWS, MAX_BODY_MB = 100, 10  # few rows, so that passing them costs little; the default body limit
MAX_BODY = int(MAX_BODY_MB * 2**20)
TOKEN = secrets.token_hex(24)  # the service's bearer token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}


def penguins_checkpoint(directory: Path, seed: int, epoch: int, kind: str = "tabm", broken: bool = False) -> Path:
    """A real checkpoint of a penguins model (weights from `seed`), fitted with a few
    full-batch steps so that its predictions differ from row to row. `broken`: one
    quantile short in a column's scaling state, as a buggy build could write it; it loads,
    and every prediction from it fails."""
    df = pd.read_csv(PENGUINS)
    state = PreprocessState(
        label="species", task="classification",
        numeric=[NumericColumn(c, float(df[c].mean()), float(df[c].std()), bool(df[c].isna().any()))
                 for c in NUMERIC],
        categorical=[CategoricalColumn(c, sorted(df[c].dropna().unique().tolist())) for c in CATEGORICAL],
        classes=sorted(df["species"].unique().tolist()),
        input_types={**{c: "double" for c in NUMERIC}, "year": "int64", "island": "string", "sex": "string"})
    fit_numeric_scaling(state, df[NUMERIC], "quantile", n_bins=16)  # quantiles, and bins for tabm
    if kind == "xgboost":  # a few trees on the prepared rows, as app/training/boost_loop.py grows them
        import xgboost

        from app.boosting import params
        from app.config import Config
        from app.data.transform import tree_feature_types, tree_inputs

        arrays = transform(df, state)
        data = xgboost.DMatrix(tree_inputs(arrays["x_num"], arrays["x_cat"], state), label=arrays["y"],
                               feature_types=tree_feature_types(state), enable_categorical=True)
        cfg = Config.model_validate({"name": "serve", "data": {"train": str(PENGUINS), "label": "species"},
                                     "model": {"kind": "xgboost"}, "train": {"seed": seed}})
        booster = xgboost.train(params(cfg, state), data, num_boost_round=8)
        return ckpt.write_booster_checkpoint(directory, booster=booster, state=state, model_cfg=cfg.model,
                                             train_state={"epoch": epoch, "progress": {"best_round": 8}})
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
    if broken:
        state.numeric[0].quantiles = state.numeric[0].quantiles[:-1]
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
    # Two model kinds: the service first serves a tabm, then rolls over to gradient-boosted trees.
    first = penguins_checkpoint(tmp / "a", seed=1, epoch=1, kind="tabm")
    second = penguins_checkpoint(tmp / "b", seed=2, epoch=2, kind="xgboost")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    options = serving.ServeOptions(replicas=2, max_rows=MAX_ROWS, max_body_bytes=MAX_BODY,
                                   token_sha256=hashlib.sha256(TOKEN.encode()).digest())
    url = serving.deploy(str(first), options, host="127.0.0.1", port=_free_port())
    yield {"url": url, "first": str(first), "second": str(second), "options": options, "token_file": str(token_file),
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
                r = session.post(f"{self.url}/predict", json=self.body, headers=AUTH, timeout=60)
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

    def answered(self, since: float = 0.0, until: float = float("inf")) -> list:
        """The successful outcomes of requests sent between `since` and `until` (monotonic)."""
        return [o for o in self.outcomes if o[1] and since <= o[0] <= until]

    def wait_for_answers(self, count: int, since: float = 0.0, timeout: float = 60.0) -> None:
        """Until `count` requests sent since `since` have been answered: a window of traffic
        measured in requests, which a slow machine stretches instead of thinning out."""
        deadline = time.monotonic() + timeout
        while len(self.answered(since)) < count:
            assert time.monotonic() < deadline, f"{len(self.answered(since))} of {count} answers; {self.failures()}"
            time.sleep(0.05)


def health_of_replicas(url: str, replicas: int) -> dict[str, dict]:
    """/health answers keyed by replica, polled until every replica has answered."""
    seen: dict[str, dict] = {}
    for _ in range(200):
        h = requests.get(f"{url}/health", headers=AUTH, timeout=30).json()
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
                                                        headers=AUTH, timeout=60), chunks))
    assert [a.status_code for a in answers] == [200] * len(chunks)
    bodies = [a.json() for a in answers]
    assert [p for b in bodies for p in b["predictions"]] == expected["prediction"].tolist()
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    got = np.array([[p[c] for c in classes] for b in bodies for p in b["probabilities"]])
    np.testing.assert_allclose(got, expected[[f"proba_{c}" for c in classes]].to_numpy(), atol=1e-6)

    schema = requests.get(f"{url}/schema", headers=AUTH, timeout=30).json()
    assert schema["features"] == Predictor.from_checkpoint(service["first"]).schema()["features"]
    assert schema["classes"] == classes and schema["limits"] == {"max_rows": MAX_ROWS, "max_body_bytes": MAX_BODY}

    # /health names the model, not where it came from.
    health = requests.get(f"{url}/health", headers=AUTH, timeout=30)
    assert {k: v for k, v in health.json().items() if k != "replica"} == \
        {"status": "ok", "kind": "tabm", "epoch": 1, "task": "classification"}
    assert str(Path(service["first"]).parent) not in health.text and "/" not in health.text


def test_every_bad_request_gets_a_4xx_naming_the_problem(service):
    url = service["url"]
    good = records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:3])
    big = json.dumps({"records": good * 30, "padding": "x" * MAX_BODY}).encode()  # a Content-Length over the limit
    cases = [  # (body, status, fragment of the error)
        (b'{"records": [', 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'{"records": [{"year": NaN}]}', 422, "column 'year', records[0]: got NaN, which is not a finite number"),
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
         422, "column 'body_mass_g' holds 'heavy', which is not a number (records[1])"),
        (json.dumps({"records": [{**good[0], "year": True}]}).encode(), 422, "column 'year', records[0]: got true"),
        (('{"records": [' + json.dumps(good[0])[:-1] + ', "bill_length_mm": 1e999}]}').encode(), 422,
         "column 'bill_length_mm', records[0]: got Infinity, which is not a finite number"),
        (json.dumps({"records": [{**good[0], "island": ["Biscoe"]}]}).encode(), 422,
         "column 'island', records[0]: got [\"Biscoe\"]; expected a string, number, boolean or null"),
        (json.dumps({"records": [good[0], {**good[1], "tags": {"a": 1}}]}).encode(), 422,
         "key 'tags', records[1]: got {\"a\": 1}; expected a string, number, boolean or null"),
    ]
    # The bad requests go in at the same time as good ones: none of the good ones suffers.
    with ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(requests.post, f"{url}/predict", data=body, headers=JSON, timeout=60)
               for body, _, _ in cases]
        fine = [pool.submit(requests.post, f"{url}/predict", json={"records": good}, headers=AUTH, timeout=60)
                for _ in cases]
        for (_, status, fragment), answer in zip(cases, bad):
            answer = answer.result()
            assert answer.status_code == status, (fragment, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert fragment in answer.json()["error"], answer.json()
        assert all(f.result().status_code == 200 and len(f.result().json()["predictions"]) == 3 for f in fine)

    # A body without a Content-Length (chunked) is cut off as soon as it passes the limit.
    chunked = requests.post(f"{url}/predict", data=(b" " * 2**16 for _ in range(MAX_BODY // 2**16 + 8)),
                            headers=JSON, timeout=60)
    assert chunked.status_code == 413 and f"over the limit of {MAX_BODY} bytes" in chunked.json()["error"]

    assert requests.get(f"{url}/nowhere", headers=AUTH, timeout=30).status_code == 404
    wrong_method = requests.get(f"{url}/predict", headers=AUTH, timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "takes POST" in wrong_method.json()["error"]
    assert requests.post(f"{url}/predict", json={"records": good}, headers=AUTH, timeout=30).status_code == 200


def test_a_10_mib_body_of_empty_records_is_refused_within_a_second(service):
    """Under the byte limit, so it streams in whole; then 3.5 million `{}`: refused from a
    count on its bytes, before json.loads would build a dict for each of them."""
    count = (MAX_BODY - 16) // 3
    body = b'{"records": [' + b",".join([b"{}"] * count) + b"]}"
    assert MAX_BODY - 16 < len(body) <= MAX_BODY
    session = requests.Session()
    assert session.get(f"{service['url']}/health", headers=AUTH, timeout=30).status_code == 200  # connected
    started = time.perf_counter()
    answer = session.post(f"{service['url']}/predict", data=body, headers=JSON, timeout=60)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 413, answer.text
    assert f"{count} records in one request; the limit is {MAX_ROWS}" in answer.json()["error"]
    assert elapsed < 1.0, f"answered after {elapsed:.2f} s"


def test_a_body_not_declared_as_json_gets_415(service):
    url = service["url"]
    body = json.dumps({"records": records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:2])}).encode()
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"):
        headers = AUTH if content_type is None else {**AUTH, "Content-Type": content_type}
        answer = requests.post(f"{url}/predict", data=body, headers=headers, timeout=30)
        assert answer.status_code == 415, (content_type, answer.text)
        assert "Content-Type: application/json" in answer.json()["error"]
    answer = requests.post(f"{url}/predict", data=body, headers={**AUTH, "Content-Type": "Application/JSON; charset=UTF-8"},
                           timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2


def test_without_the_token_every_route_gets_401_and_the_token_goes_nowhere(service):
    import ray

    url = service["url"]
    good = {"records": records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:2])}
    other = secrets.token_hex(24)
    for headers in ({}, {"Authorization": f"Bearer {other}"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        for method, path in (("GET", "/health"), ("GET", "/schema"), ("POST", "/predict")):
            answer = requests.request(method, f"{url}{path}", json=good, headers=headers, timeout=30)
            assert answer.status_code == 401, (headers, path, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer" and "token" in answer.json()["error"]
            assert other not in answer.text and TOKEN[:-1] not in answer.text
    # Refused before its body is read: a body over the byte limit, without the token, is a 401.
    big = requests.post(f"{url}/predict", data=b"x" * (MAX_BODY + 1), headers={"Content-Type": "application/json"},
                        timeout=60)
    assert big.status_code == 401

    # The API's description answers without the token (it holds nothing of the model).
    openapi = requests.get(f"{url}/openapi.json", timeout=30).json()
    body_schema = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["required"] == ["records"] and body_schema["properties"]["records"]["minItems"] == 1
    assert {"400", "401", "413", "415", "422", "500"} <= set(openapi["paths"]["/predict"]["post"]["responses"])
    assert "swagger-ui" in requests.get(f"{url}/docs", timeout=30).text

    # The token is in no answer, and in no log of Serve once a request with it is logged.
    request_id = f"token-check-{secrets.token_hex(4)}"
    answer = requests.post(f"{url}/predict", json=good, headers={**AUTH, "X-Request-ID": request_id}, timeout=30)
    assert answer.status_code == 200 and TOKEN not in answer.text
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    deadline = time.monotonic() + 30
    while not any(request_id in f.read_text(errors="replace") for f in logs.glob("*.log")):
        assert time.monotonic() < deadline, f"no log line for request {request_id} in {logs}"
        time.sleep(0.2)
    assert [f.name for f in logs.iterdir() if f.is_file() and TOKEN in f.read_text(errors="replace")] == []


def test_a_failure_is_a_500_that_names_its_request_not_the_exception(service, tmp_path):
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    from app import serve as serving

    broken = penguins_checkpoint(tmp_path / "broken", seed=3, epoch=4, kind="mlp", broken=True)
    rows = records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:2])
    with pytest.raises(ValueError) as failure:  # the failure is real: the Predictor itself fails so
        Predictor.from_checkpoint(broken).predict(pd.DataFrame(rows))
    options = serving.ServeOptions(cpus_per_replica=0.5, token_sha256=service["options"].token_sha256)
    serve.run(serving.build_app(str(broken), options, surge=False), name="broken", route_prefix="/broken")
    try:
        request_id = f"failure-{secrets.token_hex(4)}"
        answer = requests.post(f"{service['url']}/broken/predict", json={"records": rows},
                               headers={**AUTH, "X-Request-ID": request_id}, timeout=60)
        assert answer.status_code == 500 and answer.headers["x-request-id"] == request_id
        assert answer.json() == {"error": f"internal error; the service log has the details under request id "
                                          f"{request_id}", "request_id": request_id}
        # Serve gives a request without an id one, in the header and the body alike.
        unnamed = requests.post(f"{service['url']}/broken/predict", json={"records": rows}, headers=AUTH, timeout=60)
        assert unnamed.status_code == 500 and unnamed.json()["request_id"] == unnamed.headers["x-request-id"] != ""

        # The replica's log has the exception under the same id.
        replica = _get_global_client().get_serve_details()["applications"]["broken"]["deployments"][
            serving.DEPLOYMENT]["replicas"][0]
        log = Path(ray._private.worker._global_node.get_logs_dir_path() + replica["log_file_path"])
        deadline = time.monotonic() + 30
        while str(failure.value) not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"no traceback in {log}"
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert f"request {request_id}: prediction failed" in text
        assert "Traceback" in text.split(f"request {request_id}: prediction failed", 1)[1]
    finally:
        serve.delete("broken")
    for leak in (str(failure.value), "Traceback", "ValueError", str(broken)):
        assert leak not in answer.text and leak not in unnamed.text


# ---------------------------------------------------------------- any bad body: a 4xx


FEATURES = NUMERIC + CATEGORICAL
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=3), max_leaves=8)
_containers = st.lists(_json, max_size=3) | st.dictionaries(st.text(max_size=6), _json, max_size=3)
_other_keys = st.text(max_size=8).filter(lambda k: k not in FEATURES)
_huge = st.integers(min_value=2**1024, max_value=2**1100) | st.integers(min_value=-2**1100, max_value=-2**1024)
FLAWS = ("missing column", "wrong type", "huge number", "NaN or Infinity", "list or object in another key",
         "record not an object", "too many records", "records not a non-empty list", "no records key",
         "body not an object", "cut short", "not JSON at all")


@st.composite
def bad_bodies(draw) -> bytes:
    """A request body with at least one flaw that the service must refuse; besides it,
    anything goes that is allowed: unicode everywhere, other keys, any category."""
    def record() -> dict:
        r = {n: draw(st.none() | st.integers(-10**6, 10**6) | st.floats(-1e6, 1e6)) for n in NUMERIC}
        r |= {c: draw(st.none() | st.text() | st.integers(-10**6, 10**6) | st.booleans()) for c in CATEGORICAL}
        return r | draw(st.dictionaries(_other_keys, _scalars, max_size=3))

    records = [record() for _ in range(draw(st.integers(1, 3)))]
    payload: Any = {"records": records, **draw(st.dictionaries(_other_keys, _json, max_size=2))}
    flaw = draw(st.sampled_from(FLAWS))
    i, column = draw(st.integers(0, len(records) - 1)), draw(st.sampled_from(FEATURES))
    if flaw == "missing column":
        del records[i][column]
    elif flaw == "wrong type":
        records[i][column] = draw(_containers | st.text().filter(is_a_word) | st.booleans() if column in NUMERIC
                                  else _containers)
    elif flaw == "huge number":  # beyond float64
        records[i][column] = draw(_huge)
    elif flaw == "NaN or Infinity":
        records[i][column] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    elif flaw == "list or object in another key":
        records[i][draw(_other_keys)] = draw(_containers)
    elif flaw == "record not an object":
        records[i] = draw(_scalars | st.lists(_json, max_size=3))
    elif flaw == "too many records":
        payload["records"] = records * (MAX_ROWS // len(records) + 1)
    elif flaw == "records not a non-empty list":
        payload["records"] = draw(_json.filter(lambda v: not isinstance(v, list)) | st.just([]))
    elif flaw == "no records key":
        payload = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "records"), _json, max_size=3))
    elif flaw == "body not an object":
        payload = draw(_json.filter(lambda v: not isinstance(v, dict)))
    elif flaw == "not JSON at all":
        return draw(st.binary(max_size=64))
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    if flaw == "cut short":  # a proper prefix of a JSON object is never JSON
        text = text[:draw(st.integers(0, len(text) - 1))]
    return text.encode()


def is_a_word(text: str) -> bool:
    """Text that a numeric column refuses: neither a number nor a CSV reader's missing marker
    (those are read as a CSV file's text is)."""
    from app.data.transform import NULL_TEXTS

    return text not in NULL_TEXTS and pd.isna(pd.to_numeric(pd.Series([text], dtype=object), errors="coerce")[0])


@settings(max_examples=50, deadline=None, database=None)
@given(body=bad_bodies())
def test_any_bad_body_gets_a_4xx_without_a_traceback(service, body):
    answer = requests.post(f"{service['url']}/predict", data=body, headers=JSON, timeout=60)
    assert 400 <= answer.status_code < 500, (body[:300], answer.status_code, answer.text[:300])
    assert answer.headers["content-type"] == "application/json"
    assert isinstance(answer.json()["error"], str)
    assert "Traceback" not in answer.text and 'File "' not in answer.text


# ---------------------------------------------------------------- the rest, no HTTP


def test_a_listener_beyond_this_machine_needs_a_token(tmp_path, capsys, monkeypatch):
    from app.cli import main
    from app.serve import TOKEN_ENV, is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "", "::", "10.1.2.3", "192.168.0.7", "example.com"]))

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    checkpoint = str(tmp_path / "absent")  # the token is checked first: no checkpoint is read
    serve = ["serve", "--checkpoint", checkpoint, "--host", "0.0.0.0"]
    assert_bad_input(serve, capsys, "--host 0.0.0.0 is not a loopback address: serving there needs a bearer token; "
                                    "give --token-file FILE or set APP_SERVE_TOKEN")
    assert_bad_input([*serve, "--token-file", str(tmp_path / "none")], capsys, f"--token-file {tmp_path / 'none'}: "
                                                                               "no such file")
    weak = tmp_path / "weak"
    for token in ("short", f"{TOKEN} {TOKEN}"):  # too short; a space inside
        weak.write_text(token)
        assert main([*serve, "--token-file", str(weak)]) == 2
        err = capsys.readouterr().err
        assert f"--token-file {weak}: the token must be at least 16 printable ASCII characters" in err
        assert token not in err
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # with a token the host is fine: what is wrong next is the checkpoint
    assert main(serve) == 2
    err = capsys.readouterr().err
    assert f"error: --checkpoint: checkpoint {checkpoint}: not a folder" in err and TOKEN not in err
    assert_bad_input(["serve", "--checkpoint", checkpoint], capsys, f"checkpoint {checkpoint}: not a folder")  # no token


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
        traffic.wait_for_answers(10)  # the old version answers before the update starts
        update_started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "app", "serve", "--checkpoint", service["second"],
                               "--replicas", "2", "--max-rows", str(MAX_ROWS), "--max-body-mb", str(MAX_BODY_MB),
                               "--token-file", service["token_file"], "--address", service["address"]],
                              cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=180, check=False)
        update_done = time.monotonic()
        traffic.wait_for_answers(20, since=update_done)  # and 20 sent after it is done
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"updated {url} to {service['second']} (epoch 2) with 2 replica(s)" in done.stdout
    assert traffic.failures() == []
    assert len(traffic.answered(update_started, update_done)) >= 10  # served all through the update

    answers = health_of_replicas(url, replicas=2)
    assert {(h["kind"], h["epoch"]) for h in answers.values()} == {("xgboost", 2)}
    got = requests.post(f"{url}/predict", json={"records": rows}, headers=AUTH, timeout=30).json()["probabilities"]
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
        traffic.wait_for_answers(10)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        while True:  # until Serve runs two replicas again, neither of them the killed one
            now = replicas()
            if victim not in now and list(now.values()) == ["RUNNING", "RUNNING"]:
                break
            assert time.monotonic() < killed_at + 60, now
            time.sleep(0.2)
        recovered_at = time.monotonic()
        traffic.wait_for_answers(20, since=recovered_at)
    # Only requests already inside the killed replica may fail (each gets a 500 from Serve's
    # proxy): at most one per client. Everything sent after the replacement is up succeeds.
    assert len(traffic.failures()) <= len(traffic.threads), traffic.failures()
    assert all(code == 500 for _, _, code in traffic.failures())
    assert traffic.failures(since=recovered_at) == []
    assert len(traffic.answered(killed_at, recovered_at)) > 10  # it kept answering
    after = health_of_replicas(url, replicas=2)
    assert victim not in after and len(after) == 2


# ---------------------------------------------------------------- issue 28: not finite, not UTF-8


def test_nan_and_infinity_get_a_422_naming_the_key_in_any_column_and_only_utf8_is_json(service):
    url = service["url"]
    good = records_of(pd.read_csv(PENGUINS).drop(columns=["species"]).iloc[:2])

    def with_value(i: int, key: str, literal: str) -> bytes:  # records[i][key] written as `literal`
        records = [dict(r) for r in good]
        records[i][key] = "@"
        return json.dumps({"records": records}).replace('"@"', literal).encode()

    text = json.dumps({"records": good})
    cases = [  # (body, status, fragment of the error)
        (with_value(0, "island", "1e999"), 422, "column 'island', records[0]: got Infinity, which is not a finite"),
        (with_value(1, "sex", "-1e999"), 422, "column 'sex', records[1]: got -Infinity, which is not a finite number"),
        (with_value(0, "sex", "NaN"), 422, "column 'sex', records[0]: got NaN, which is not a finite number"),
        (with_value(1, "year", "-Infinity"), 422, "column 'year', records[1]: got -Infinity, which is not a finite"),
        (with_value(0, "body_mass_g", "1e999"), 422, "column 'body_mass_g', records[0]: got Infinity, which is not"),
        (with_value(1, "note", "Infinity"), 422, "key 'note', records[1]: got Infinity, which is not a finite number"),
        (with_value(0, "year", '"2008 or so"'), 422,
         "column 'year' holds '2008 or so', which is not a number (records[0]); send a number or null"),
        (text.encode("utf-16"), 400, "malformed JSON: the body is not UTF-8 (byte 0xff at offset 0)"),  # with a BOM
        (text.encode("utf-16-be"), 400, "malformed JSON: the body is not UTF-8 (byte 0x00 at offset 0)"),
        (text.encode("utf-32-le"), 400, "malformed JSON: the body is not UTF-8 (byte 0x00 at offset 1)"),
        (json.dumps({"records": [{**good[0], "island": "Béscoe"}]}, ensure_ascii=False).encode("latin-1"), 400,
         "the body is not UTF-8 (byte 0xe9 at offset"),
        (("\ufeff" + text).encode(), 200, None),  # a UTF-8 byte order mark: JSON may carry one (RFC 8259)
        (json.dumps({"records": [{**good[0], "island": "Bíscoe ✓"}, good[1]]}, ensure_ascii=False).encode(), 200,
         None),
    ]
    for body, status, fragment in cases:
        answer = requests.post(f"{url}/predict", data=body, headers=JSON, timeout=60)
        assert answer.status_code == status, (body[:80], answer.text)
        if fragment is None:
            assert len(answer.json()["predictions"]) == 2
        else:
            assert fragment in answer.json()["error"], answer.json()
