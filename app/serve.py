"""`serve`: real-time predictions over HTTP with Ray Serve, from one checkpoint.

    python -m app serve --checkpoint runs/quickstart/checkpoint_epoch_0012 [--replicas 2] [--port 8000]
    curl -s 127.0.0.1:8000/predict -d '{"records": [{"island": "Biscoe", "bill_length_mm": 45.1, ...}]}'

One Serve application (`APP_NAME`) with one deployment: N replicas that each load the
checkpoint once into a `Predictor`. Every request is parsed and checked on its own first
(JSON, row count, body size, columns, value types), so a bad request gets its own 4xx and
never reaches the model; the good ones are then merged by `@serve.batch` into one model
call per batch. Running `serve` again on the same cluster with another checkpoint rolls the
running application over to it, replica by replica: a retired replica finishes the
requests it holds, and where the cluster has room its replacement starts first, so no
request fails and capacity never drops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from ray import serve
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app import cluster
from app.data.transform import PreprocessState
from app.errors import UserError
from app.predictor import SCORE_BATCH

APP_NAME = "app"  # the Serve application; a second `serve` on the same cluster updates it
DEPLOYMENT = "Predictor"


@dataclass
class ServeOptions:
    replicas: int = 1  # copies of the model, each in its own Ray actor
    cpus_per_replica: float = 1.0  # logical CPUs reserved per replica; also its torch threads
    max_rows: int = 10_000  # records per request; more is refused with 413
    max_body_bytes: int = 10 * 2**20  # request body size; more is refused with 413
    max_batch_size: int = 32  # requests merged into one model call
    batch_wait_s: float = 0.005  # how long a batch waits for more requests after its first


# ---------------------------------------------------------------- one request, no Ray


class BadRequest(Exception):
    """A request the service refuses: HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; send null for a missing value")


def parse_records(body: bytes, state: PreprocessState, max_rows: int) -> pd.DataFrame:
    """The feature columns of `{"records": [{column: value, ...}, ...]}`, checked.

    Numeric features take numbers or null (null is imputed as in training); categorical
    ones take strings, numbers, booleans or null (unseen values go to the unknown bucket).
    Every record names every feature; other keys are ignored."""
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(400, f"malformed JSON: {e}") from None
    if not isinstance(payload, dict) or "records" not in payload:
        raise BadRequest(400, 'expected a JSON object {"records": [{column: value, ...}, ...]}')
    records = payload["records"]
    if not isinstance(records, list) or not records:
        raise BadRequest(400, '"records" must be a non-empty list of objects')
    if len(records) > max_rows:
        raise BadRequest(413, f"{len(records)} records in one request; the limit is {max_rows}, "
                              f"split them over several requests")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(400, f"records[{i}] is not an object")
    features = state.features
    absent = [f for f in features if all(f not in r for r in records)]
    if absent:
        raise BadRequest(422, f"missing feature column(s): {', '.join(absent)} "
                              f"(the model reads: {', '.join(features)})")
    for i, record in enumerate(records):
        lacking = [f for f in features if f not in record]
        if lacking:
            raise BadRequest(422, f"records[{i}] lacks feature(s) {', '.join(lacking)}; send null for a missing value")
    numeric = {c.name for c in state.numeric}
    return pd.DataFrame({name: (_numeric_column if name in numeric else _categorical_column)(name, records)
                         for name in features})


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _numeric_column(name: str, records: list[dict]) -> np.ndarray:
    out = np.empty(len(records), dtype=np.float64)
    for i, record in enumerate(records):
        v = record[name]
        if v is None:
            out[i] = np.nan
        elif type(v) in (int, float):  # not bool, an int to Python but not a number in JSON
            try:
                out[i] = v
            except OverflowError:  # an integer beyond float64
                out[i] = np.inf
            if np.isinf(out[i]):  # JSON's 1e999 parses as infinity
                raise BadRequest(422, f"column {name!r}, records[{i}]: a number out of range")
        else:
            raise BadRequest(422, f"column {name!r}, records[{i}]: got {_short(v)}; expected a number or null")
    return out


def _categorical_column(name: str, records: list[dict]) -> np.ndarray:
    values = [record[name] for record in records]
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, (str, int, float)):  # bool is an int
            raise BadRequest(422, f"column {name!r}, records[{i}]: got {_short(v)}; "
                                  f"expected a string, number, boolean or null")
        if type(v) is int and not np.isfinite(_as_float(v)):  # canonical category text goes through float
            raise BadRequest(422, f"column {name!r}, records[{i}]: a number out of range")
    return np.array(values, dtype=object)


def _as_float(v: int) -> float:
    try:
        return float(v)
    except OverflowError:
        return float("inf")


def response_body(columns: dict[str, np.ndarray], state: PreprocessState) -> dict[str, Any]:
    """{"predictions": [...]} (and "probabilities": [{class: p, ...}, ...]) of one request."""
    body: dict[str, Any] = {"predictions": columns["prediction"].tolist()}
    if state.task == "classification":
        names = [str(c) for c in state.classes]
        proba = np.column_stack([columns[f"proba_{c}"] for c in state.classes]).tolist()
        body["probabilities"] = [dict(zip(names, row)) for row in proba]
    return body


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


def ok(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), media_type="application/json")


# ---------------------------------------------------------------- the deployment


# A crashed replica is noticed within health_check_period_s and replaced; a retired one
# (rolling update, scale-down) stops taking requests and finishes its own within
# graceful_shutdown_timeout_s, checking every graceful_shutdown_wait_loop_s.
@serve.deployment(name=DEPLOYMENT, health_check_period_s=2, graceful_shutdown_timeout_s=10,
                  graceful_shutdown_wait_loop_s=0.5)
class PredictorDeployment:
    """One replica: the checkpoint's `Predictor` behind POST /predict, GET /health, GET /schema."""

    def __init__(self, checkpoint: str, options: ServeOptions):
        import torch

        from app.predictor import Predictor

        torch.set_num_threads(max(1, int(options.cpus_per_replica)))
        self.checkpoint = checkpoint
        self.options = options
        self.predictor = Predictor.from_checkpoint(checkpoint)
        self.predict_batch.set_max_batch_size(options.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(options.batch_wait_s)
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()

    async def __call__(self, request: Request) -> Response:
        routes = {"/predict": "POST", "/health": "GET", "/schema": "GET"}
        path = request.url.path.rstrip("/") or "/"
        if path not in routes:
            return error(404, f"no route {path}; try POST /predict, GET /health or GET /schema")
        if request.method != routes[path]:
            return error(405, f"{path} takes {routes[path]}, not {request.method}", {"Allow": routes[path]})
        if path == "/health":
            return ok({"status": "ok", "checkpoint": self.checkpoint, "epoch": self.predictor.epoch,
                       "replica": self.replica})
        if path == "/schema":
            return ok({**self.predictor.schema(), "limits": {"max_rows": self.options.max_rows,
                                                             "max_body_bytes": self.options.max_body_bytes}})
        try:
            body = await self.read_body(request)
            if len(body) < 100_000:
                rows = parse_records(body, self.predictor.state, self.options.max_rows)
            else:  # tens of milliseconds: off the event loop, which keeps serving other requests
                rows = await asyncio.to_thread(parse_records, body, self.predictor.state, self.options.max_rows)
        except BadRequest as e:
            return error(e.status, e.message)
        except ClientDisconnect:
            return error(400, "the client went away before sending the whole body")
        try:
            columns = await self.predict_batch(rows)
        except Exception as e:  # noqa: BLE001 - a bug, not the caller's fault: say so in JSON, keep serving
            return error(500, f"prediction failed: {type(e).__name__}: {e}")
        return ok(response_body(columns, self.predictor.state))

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to pass the limit."""
        limit = self.options.max_body_bytes
        too_large = BadRequest(413, f"request body over the limit of {limit} bytes; send fewer records at once")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    @serve.batch(max_batch_size=ServeOptions.max_batch_size, batch_wait_timeout_s=ServeOptions.batch_wait_s)
    async def predict_batch(self, frames: list[pd.DataFrame]) -> list[dict[str, np.ndarray]]:
        """One model call for the rows of several requests; each gets its own slice back."""
        rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        # In a thread: the replica keeps reading and checking requests while the model runs.
        columns = await asyncio.to_thread(self.predictor.prediction_columns, rows, SCORE_BATCH)
        bounds = np.cumsum([0] + [len(f) for f in frames])
        return [{k: v[a:b] for k, v in columns.items()} for a, b in zip(bounds[:-1], bounds[1:])]


def build_app(checkpoint: str, options: ServeOptions, surge: bool):
    return PredictorDeployment.options(
        num_replicas=options.replicas,
        # One request per replica at a time would defeat batching: admit two batches' worth.
        max_ongoing_requests=2 * options.max_batch_size,
        # A rolling update starts one replica of the new version before it stops an old
        # one, so capacity never drops; without room for that extra replica, Serve stops
        # an old one first, and requests wait for the others meanwhile.
        max_surge_percent=1 if surge else 0,
        # Access logs go to the replica's log file, not to the terminal of the driver.
        ray_actor_options={"num_cpus": options.cpus_per_replica,
                           "runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR":
                                                        os.environ.get("RAY_SERVE_LOG_TO_STDERR", "0")}}},
    ).bind(checkpoint, options)


# ---------------------------------------------------------------- the driver's side


def check_replicas_fit(options: ServeOptions) -> None:
    """Refuse replicas that the cluster as it stands can never host (Serve would wait forever)."""
    room, total, nodes = cluster.room_for({"CPU": options.cpus_per_replica})
    if room < options.replicas:
        raise UserError(f"--replicas {options.replicas} with --cpus-per-replica {options.cpus_per_replica:g} "
                        f"can never be scheduled: the cluster has {total['CPU']:g} CPU on {nodes} node(s), "
                        f"room for {room} such replica(s)")


def check_port_free(host: str, port: int) -> None:
    """On an embedded Ray the proxy binds here: a busy port would only show as a proxy that
    never becomes ready."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy does: TIME_WAIT is no obstacle
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


def serve_started() -> bool:
    """Whether Serve (its controller) runs on the connected cluster."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False) is not None


def is_running() -> bool:
    """Whether our application already runs on the connected cluster."""
    return APP_NAME in serve.status().applications


def deploy(checkpoint: str, options: ServeOptions, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve (if it is not running yet) and run the application, or roll the running
    one over to `checkpoint`. Returns when every replica answers; the URL it serves at."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no INFO lines on this terminal
    import ray

    # Room for one replica more than the update needs, and that much CPU free right now.
    surge = (cluster.room_for({"CPU": options.cpus_per_replica})[0] > options.replicas
             and ray.available_resources().get("CPU", 0) >= options.cpus_per_replica)
    if not is_running():  # Serve's HTTP settings are fixed once it runs
        serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(checkpoint, options, surge), name=APP_NAME, route_prefix="/")
    return url()


def url() -> str:
    """Where the running Serve listens (its own settings: a second `serve` cannot change them)."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().get_serve_details().get("http_options", {})
    host = http.get("host", "127.0.0.1")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{http.get('port', 8000)}"


def replicas() -> dict[str, str]:
    """{replica actor name: state} of our deployment, e.g. {"SERVE_REPLICA::app#Predictor#x1": "RUNNING"}."""
    from ray.serve.context import _get_global_client

    app = _get_global_client().get_serve_details().get("applications", {}).get(APP_NAME, {})
    found = app.get("deployments", {}).get(DEPLOYMENT, {}).get("replicas", [])
    return {r["actor_name"]: str(getattr(r["state"], "value", r["state"])) for r in found}


def run(checkpoint: str, *, epoch: int, options: ServeOptions, host: str, port: int, address: str | None) -> None:
    """The `serve` command, once the checkpoint has loaded: serve it until SIGINT or SIGTERM,
    or, when our application already runs on the cluster, roll it over to `checkpoint` and
    return (the process that started it still owns it)."""
    signals = StopSignals()
    signals.install()
    cluster.connect(address)  # quiets Serve's logs before its processes start
    signals.install()
    check_replicas_fit(options)
    updating = is_running()
    embedded = not (address or os.environ.get("RAY_ADDRESS"))  # or joined a `ray start` of this machine
    if embedded and not serve_started():
        check_port_free(host, port)  # Serve's proxy is about to listen on this machine
    where = deploy(checkpoint, options, host, port)
    what = f"{checkpoint} (epoch {epoch}) with {options.replicas} replica(s)"
    if updating:
        print(f"updated {where} to {what}", flush=True)
        return
    print(f"serving {what} at {where}: POST /predict, GET /health, GET /schema; Ctrl-C stops", flush=True)
    name = signals.wait()
    stop()
    print(f"{name}: stopped", flush=True)


class StopSignals:
    """SIGINT and SIGTERM from `install` on. Until `wait` starts, a signal interrupts what
    runs (KeyboardInterrupt); Ray can swallow that inside its own calls, so every signal is
    also recorded, and `wait` returns at once for one that came early."""

    def __init__(self):
        self.received: list[str] = []
        self.came = threading.Event()
        self.waiting = False

    def install(self) -> None:
        """(Again after ray.init, which sets its own SIGTERM handler.)"""
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received.append(signal.Signals(signum).name)
        self.came.set()
        if not self.waiting:
            raise KeyboardInterrupt

    def wait(self) -> str:
        """Block until the first signal; its name."""
        self.waiting = True
        while not self.came.wait(0.5):
            pass
        return self.received[0]


def stop() -> None:
    """Take down our application (its replicas finish the requests they hold), and Serve
    itself when nothing else runs on it. An embedded Ray takes Serve along when it stops
    (and serve.shutdown() would only add a spurious warning from the raylet)."""
    import ray._private.worker

    serve.delete(APP_NAME)
    node = ray._private.worker._global_node
    started_here = node is not None and node.head
    if not started_here and not serve.status().applications:
        serve.shutdown()
