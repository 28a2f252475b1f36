"""`serve`: real-time predictions over HTTP with Ray Serve, from one checkpoint.

    python -m app serve --checkpoint runs/quickstart/checkpoint_epoch_0012 [--replicas 2] [--port 8000]
    curl -s 127.0.0.1:8000/predict -H 'Content-Type: application/json' \\
        -d '{"records": [{"island": "Biscoe", "bill_length_mm": 45.1, ...}]}'

One Serve application (`APP_NAME`) with one deployment: N replicas that each load the
checkpoint once into a `Predictor`, behind a FastAPI app (`api`), whose pydantic models
give the OpenAPI schema at /docs. Every request is checked on its own before it costs
anything: the bearer token (401), the content type (415), the body size while it streams
in (413), then what parsing it would cost, counted on the raw bytes (413), and only then
JSON, shape, columns and value types (400, 422). So a bad request gets its own 4xx and
never reaches the model; the good ones are merged by `@serve.batch` into one model call
per batch. A failure of our own is a 500 with a request id, whose details are in the
replica's log under that id. Running `serve` again on the same cluster with another
checkpoint rolls the running application over to it, replica by replica: a retired
replica finishes the requests it holds, and where the cluster has room its replacement
starts first, so no request fails and capacity never drops.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' signatures at
# run time, after Ray's class-based view has rewritten them, and needs real types there.
import asyncio
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import os
import re
import signal
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd

from app.extras import require

require("serve", "fastapi", "starlette", "uvicorn")  # before the imports below: one clear line

from fastapi import Depends, FastAPI  # noqa: E402
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from ray import serve
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app import cluster, ray_compat, storage
from app.data.transform import BadValue, PreprocessState, numbers
from app.errors import UserError
from app.predictor import SCORE_BATCH

APP_NAME = "app"  # the Serve application; a second `serve` on the same cluster updates it
DEPLOYMENT = "Predictor"
TOKEN_ENV = "APP_SERVE_TOKEN"  # the bearer token, where --token-file is not given
MIN_TOKEN_CHARS = 16
EXTRA_KEYS = 64  # keys a record may carry beyond the model's columns, in the parse budget

logger = logging.getLogger("ray.serve")  # in a replica: its log file, each line with the request id
log = logging.getLogger(__name__)  # the `serve` command's own lines (app/logs.py)


@dataclass
class ServeOptions:
    replicas: int = 1  # copies of the model, each in its own Ray actor
    cpus_per_replica: float = 1.0  # logical CPUs reserved per replica; also its torch threads
    max_rows: int = 10_000  # records per request; more is refused with 413
    max_body_bytes: int = 10 * 2**20  # request body size; more is refused with 413
    max_batch_size: int = 32  # requests merged into one model call
    batch_wait_s: float = 0.005  # how long a batch waits for more requests after its first
    # Requests a replica holds at once (reading, waiting for a batch, in the model); Serve's
    # proxy queues the rest. Two batches' worth, so batching is never starved.
    max_ongoing_requests: int = 64
    # SHA-256 of the bearer token (None: no token). Only the digest travels to the replicas.
    token_sha256: bytes | None = field(default=None, repr=False)


# ---------------------------------------------------------------- the bearer token, no Ray


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (a name other than localhost counts as not)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    """The bearer token from `token_file`, else from $APP_SERVE_TOKEN (unset or empty: none).
    The messages name where the token comes from, never the token; a file that other users
    may read or write gets a warning."""
    if token_file is not None:
        where, path = f"--token-file {token_file}", Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            raise UserError(f"{where}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{where}: cannot read it ({type(e).__name__})") from None
        if mode & 0o077:
            log.warning(f"{where}: other users have access to it (mode {mode:03o}); "
                        f"keep the token to yourself with chmod 600 {token_file}")
    else:
        where, token = f"${TOKEN_ENV}", os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS or not all("!" <= c <= "~" for c in token):
        raise UserError(f"{where}: the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                        f"without spaces (e.g. the output of `openssl rand -hex 32`)")
    return token


def token_digest(token_file: str | None, host: str) -> bytes | None:
    """The SHA-256 of the configured token (None: none), after refusing a listener beyond
    this machine that has none."""
    token = read_token(token_file)
    if token is None:
        require_token(host)
        return None
    return hashlib.sha256(token.encode()).digest()


def require_token(host: str, where: str | None = None) -> None:
    """Refuse to listen on `host` without a token, unless only this machine can reach it."""
    if not is_loopback(host):
        where = where or f"--host {host or '(every interface)'}"
        raise UserError(f"{where} is not a loopback address: serving there needs a bearer token; "
                        f"give --token-file FILE or set {TOKEN_ENV}")


# ---------------------------------------------------------------- one request, no Ray


class BadRequest(Exception):
    """A request the service refuses: HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def check_content_type(value: str | None) -> None:
    """JSON, which is UTF-8 (RFC 8259): `application/json`, with no charset or utf-8."""
    media, _, params = (value or "").partition(";")
    charset = next((p.split("=", 1)[1].strip().strip('"').lower() for p in params.split(";")
                    if p.strip().lower().startswith("charset=")), "utf-8")
    if media.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise BadRequest(415, f"send the records as JSON with Content-Type: application/json, "
                              f"not {_short(value) if value else 'no Content-Type'}")


# A JSON string, or an unterminated one up to the end; never fails once it has started,
# so one pass over the body is linear in its length.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NESTING = np.zeros(256, dtype=np.int8)
_NESTING[[ord("{"), ord("[")]] = 1
_NESTING[[ord("}"), ord("]")]] = -1


def check_cost(body: bytes, *, max_rows: int, columns: int) -> None:
    """Refuse (413) a body that would cost more to parse than the largest request the
    limits allow (`max_rows` records of the model's `columns` and `EXTRA_KEYS` more keys
    each), counted on its bytes, before json.loads builds one Python object per value:
    a few megabytes of `[{}, {}, ...]` are millions of dicts.

    Every JSON value but the first in each container follows a `,` or a `:`, so the
    structural characters bound the number of values from above. Characters inside
    strings only add to that bound; where they push it past the budget, the strings are
    blanked out and the characters counted again."""
    budget = 2 * max_rows * (columns + EXTRA_KEYS)  # keys and values
    count = body.count
    if count(b",") + count(b":") + count(b"{") + count(b"[") <= budget:
        return  # the common case: a few C-speed passes over the bytes
    # Each string is a value of its own: a lower bound on them, before blanking them out
    # costs time per string (a quote that `\` escapes is inside a string).
    if (count(b'"') - count(b'\\"')) // 2 > budget:
        raise BadRequest(413, _too_complex(max_rows, columns))
    bare = _STRING.sub(b'""', body)
    records = _count_records(bare)
    if records > max_rows:
        raise BadRequest(413, f"{records} records in one request; the limit is {max_rows}, "
                              f"split them over several requests")
    if bare.count(b",") + bare.count(b":") + bare.count(b"{") + bare.count(b"[") > budget:
        raise BadRequest(413, _too_complex(max_rows, columns))


def _too_complex(max_rows: int, columns: int) -> str:
    return (f"the body holds more JSON values than {max_rows} records of the model's {columns} columns "
            f"and {EXTRA_KEYS} other keys each; split it over several requests")


def _count_records(bare: bytes, chunk: int = 2**20) -> int:
    """Objects two levels down, where {"records": [{...}, ...]} has its records, in a body
    whose strings are blanked out: counted from the nesting depth, a chunk at a time."""
    records, depth = 0, 0
    for start in range(0, len(bare), chunk):
        chars = np.frombuffer(bare, dtype=np.uint8, count=min(chunk, len(bare) - start), offset=start)
        after = depth + np.cumsum(_NESTING[chars], dtype=np.int64)  # the depth after each character
        records += int(np.count_nonzero((chars == ord("{")) & (after == 3)))
        depth = int(after[-1])
    return records


def _utf8(body: bytes) -> str:
    """The body as text: JSON is UTF-8 (RFC 8259), where json.loads would take UTF-16 and
    UTF-32 bytes as well. A UTF-8 byte order mark in front is allowed."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        at = e.start
    else:
        at = body.find(b"\x00")  # never in JSON (controls in strings are escaped), all over UTF-16 and -32
        if at < 0:
            return text
    raise BadRequest(400, f"malformed JSON: the body is not UTF-8 (byte {body[at]:#04x} at offset {at}); "
                          f"send JSON as UTF-8")


# What one record's values may be: JSON scalars (types kept: 1 stays an int, true a bool).
# Not NaN or infinity: json.loads reads NaN, Infinity and an out-of-range 1e999 as such.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Scalar = StrictStr | StrictInt | FiniteFloat | StrictBool | None


class PredictRequest(BaseModel):
    """The body of POST /predict."""

    records: list[dict[str, Scalar]] = Field(
        min_length=1,
        description="One object per row: every feature column of the model (GET /schema lists them) -> a "
                    "number, string, boolean or null (a missing value). Other keys are ignored.",
        examples=[[{"island": "Biscoe", "bill_length_mm": 45.1, "bill_depth_mm": 14.5,
                    "flipper_length_mm": 215, "body_mass_g": 5000, "sex": "female", "year": 2008}]])


def parse_records(body: bytes, state: PreprocessState, max_rows: int) -> dict[str, np.ndarray]:
    """The feature columns of `{"records": [{column: value, ...}, ...]}`, checked, as arrays
    (a batch of requests becomes one DataFrame: building one per request costs more than
    all the rest of its checks).

    Numeric features take numbers or null (null is imputed as in training); categorical
    ones take strings, numbers, booleans or null (unseen values go to the unknown bucket).
    Every record names every feature; other keys are ignored, but hold scalars too."""
    check_cost(body, max_rows=max_rows, columns=len(state.features))
    try:
        payload = json.loads(_utf8(body))
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise BadRequest(400, f"malformed JSON: {e}") from None
    try:
        records = PredictRequest.model_validate(payload).records
    except ValidationError as e:
        errors = e.errors()  # a value refused by every type of the union: one error per type
        raise _refusal(next((x for x in errors if x["type"] == "finite_number"), errors[0]), state) from None
    if len(records) > max_rows:
        raise BadRequest(413, f"{len(records)} records in one request; the limit is {max_rows}, "
                              f"split them over several requests")
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
    return {name: (_numeric_column if name in numeric else _categorical_column)(name, records)
            for name in features}


def _refusal(error: dict[str, Any], state: PreprocessState) -> BadRequest:
    """PredictRequest's first complaint, in the words of this service."""
    loc = error["loc"]
    if not loc or (loc == ("records",) and error["type"] == "missing"):
        return BadRequest(400, 'expected a JSON object {"records": [{column: value, ...}, ...]}')
    if len(loc) == 1:
        return BadRequest(400, '"records" must be a non-empty list of objects')
    if len(loc) == 2:
        return BadRequest(400, f"records[{loc[1]}] is not an object")
    name = loc[2]
    what = "column" if name in state.features else "key"
    if error["type"] == "finite_number":
        return BadRequest(422, f"{what} {name!r}, records[{loc[1]}]: got {_short(error['input'])}, which is not "
                               f"a finite number; send null for a missing value")
    expected = "a number or null" if name in {c.name for c in state.numeric} \
        else "a string, number, boolean or null"
    return BadRequest(422, f"{what} {name!r}, records[{loc[1]}]: got {_short(error['input'])}; expected {expected}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _numeric_column(name: str, records: list[dict]) -> np.ndarray:
    values = [record[name] for record in records]
    for i, v in enumerate(values):
        if type(v) is str:  # read as a CSV file's text is (`transform.numbers`): a number, missing, or refused
            try:
                number = float(numbers(pd.Series([v], dtype=object), name)[0])
            except BadValue as e:
                raise BadRequest(422, f"{e} (records[{i}]); send a number or null") from None
            values[i] = None if np.isnan(number) else number
            continue
        if v is not None and type(v) not in (int, float):  # a bool is an int to Python, not a number in JSON
            raise BadRequest(422, f"column {name!r}, records[{i}]: got {_short(v)}; expected a number or null")
    try:  # floats are finite here (PredictRequest)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        i = next(i for i, v in enumerate(values) if type(v) is int and np.isinf(_as_float(v)))
        raise BadRequest(422, f"column {name!r}, records[{i}]: a number out of range") from None


def _categorical_column(name: str, records: list[dict]) -> np.ndarray:
    values = [record[name] for record in records]
    for i, v in enumerate(values):
        if type(v) is int and not np.isfinite(_as_float(v)):  # canonical category text goes through float
            raise BadRequest(422, f"column {name!r}, records[{i}]: a number out of range")
    return np.array(values, dtype=object)


def _as_float(v: int) -> float:
    try:
        return float(v)
    except OverflowError:
        return float("inf")


class PredictResponse(BaseModel):
    """One prediction per record, in order; for classification also each class's probability."""

    predictions: list[StrictStr | StrictInt | StrictBool | StrictFloat | None] = Field(
        description="The predicted class (classification) or value in the label's units (regression).")
    probabilities: list[dict[str, float]] | None = Field(
        default=None, description="Classification only: {class: probability} per record.")


def response_body(columns: dict[str, np.ndarray], state: PreprocessState) -> bytes:
    """The JSON of one request's PredictResponse."""
    probabilities = None
    if state.task == "classification":
        names = [str(c) for c in state.classes]
        proba = np.column_stack([columns[f"proba_{c}"] for c in state.classes]).tolist()
        probabilities = [dict(zip(names, row)) for row in proba]
    answer = PredictResponse(predictions=columns["prediction"].tolist(), probabilities=probabilities)
    return answer.model_dump_json(exclude_none=True).encode()


# ---------------------------------------------------------------- the HTTP API


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, and where (the column and the record, where there is one).")


class ServerError(BaseModel):
    error: str
    request_id: str = Field(description="Also in the X-Request-ID header; the replica's log has the details "
                                        "under this id.")


class Health(BaseModel):
    """Which model answers: nothing about where it came from."""

    status: str
    kind: str = Field(description="The model kind: tabm or mlp.")
    epoch: int = Field(description="The training epoch of the checkpoint.")
    task: str = Field(description="classification or regression.")
    replica: str = Field(description="The Serve replica that answered.")


class Feature(BaseModel):
    name: str
    kind: str = Field(description="numeric or categorical")
    type: str = Field(description="The Arrow type that training read.")


class Limits(BaseModel):
    max_rows: int
    max_body_bytes: int


class Schema(BaseModel):
    """What POST /predict expects."""

    features: list[Feature]
    label: str
    task: str
    classes: list[Scalar] | None
    limits: Limits


_WHEN = {
    400: 'Not JSON in UTF-8, or not {"records": [...]} with a non-empty list of objects.',
    401: "A token is configured, and the request lacks `Authorization: Bearer <token>` or has another token.",
    413: "A body over the byte limit, more records than the row limit, or more values than parsing them allows.",
    415: "A Content-Type other than application/json.",
    422: "A feature column missing from a record, or a value of the wrong type, out of range, NaN or Infinity.",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    **{status: {"model": ErrorBody, "description": when} for status, when in _WHEN.items()},
    500: {"model": ServerError, "description": "A failure of the service; quote the request id."}}

api = FastAPI(title="app serve", version="1", redoc_url=None,
              description="Predictions from one checkpoint. Where `serve` has a token, every route but /docs "
                          "and /openapi.json needs `Authorization: Bearer <token>`.")
bearer = HTTPBearer(auto_error=False, description="The token that `serve` was given (--token-file or "
                                                  f"${TOKEN_ENV}).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]  # None: no bearer token sent


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorBody(error=message).model_dump_json(), status_code=status, media_type="application/json",
                    headers=headers)


def internal_error(request: Request, what: str, e: BaseException) -> Response:
    """A 500 that names the request, not the failure: the replica's log has the traceback
    under the same id (Serve's proxy sets the id, or keeps the client's X-Request-ID, and
    returns it in the X-Request-ID header of every answer)."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex  # none: not through the proxy
    logger.error(f"request {request_id}: {what}", exc_info=e)
    body = ServerError(error=f"internal error; the service log has the details under request id {request_id}",
                       request_id=request_id)
    return Response(body.model_dump_json(), status_code=500, media_type="application/json")


@api.exception_handler(BadRequest)
async def _refused(request: Request, e: BadRequest) -> Response:
    return error(e.status, e.message, e.headers)


@api.exception_handler(HTTPException)
async def _no_route(request: Request, e: HTTPException) -> Response:
    path = request.url.path
    if e.status_code == 404:
        return error(404, f"no route {path}; try POST /predict, GET /health, GET /schema or GET /docs")
    if e.status_code == 405:
        return error(405, f"{path} takes {(e.headers or {}).get('Allow', '')}, not {request.method}", e.headers)
    return error(e.status_code, str(e.detail), e.headers)


@api.exception_handler(Exception)
async def _failed(request: Request, e: Exception) -> Response:
    return internal_error(request, f"{request.method} {request.url.path} failed", e)


# A crashed replica is noticed within health_check_period_s and replaced; a retired one
# (rolling update, scale-down) stops taking requests and finishes its own within
# graceful_shutdown_timeout_s, checking every graceful_shutdown_wait_loop_s.
@serve.deployment(name=DEPLOYMENT, health_check_period_s=2, graceful_shutdown_timeout_s=10,
                  graceful_shutdown_wait_loop_s=0.5)
@serve.ingress(api)
class PredictorDeployment:
    """One replica: the checkpoint's `Predictor` behind POST /predict, GET /health, GET /schema."""

    def __init__(self, checkpoint: str, options: ServeOptions):
        import torch

        from app.predictor import Predictor
        from app import checkpoint as ckpt

        torch.set_num_threads(max(1, int(options.cpus_per_replica)))
        self.options = options
        self.predictor = Predictor.from_checkpoint(checkpoint)
        self.predict_batch.set_max_batch_size(options.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(options.batch_wait_s)
        kind = ckpt.model_config(storage.read_json(storage.join(checkpoint, ckpt.MANIFEST))).kind
        self.health = Health(status="ok", kind=kind, epoch=self.predictor.epoch, task=self.predictor.state.task,
                             replica=serve.get_replica_context().replica_id.to_full_id_str())
        self.schema = Schema(**self.predictor.schema(), limits=Limits(max_rows=options.max_rows,
                                                                       max_body_bytes=options.max_body_bytes))

    def authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        """With a token configured: the request's bearer token is it (compared in constant time)."""
        expected = self.options.token_sha256
        if expected is None:
            return
        if credentials is None:
            raise BadRequest(401, "this service needs the header Authorization: Bearer <token>",
                             {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(hashlib.sha256(credentials.credentials.encode()).digest(), expected):
            raise BadRequest(401, "the bearer token is not this service's", {"WWW-Authenticate": "Bearer"})

    @api.get("/health", response_model=Health, responses={401: _ERRORS[401]})
    async def get_health(self, credentials: Credentials) -> Health:
        """The model this replica serves."""
        self.authorize(credentials)
        return self.health

    @api.get("/schema", response_model=Schema, responses={401: _ERRORS[401]})
    async def get_schema(self, credentials: Credentials) -> Schema:
        """The columns POST /predict expects, the label, task, classes and request limits."""
        self.authorize(credentials)
        return self.schema

    # The body is read and checked here (not by FastAPI), so that a body over the limits is
    # refused before it is parsed; PredictRequest still describes it in the OpenAPI schema.
    @api.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(self, request: Request, credentials: Credentials) -> Response:
        """Predictions for the records, in order. Refused before the model (4xx): see the
        responses below."""
        self.authorize(credentials)
        check_content_type(request.headers.get("content-type"))
        try:
            body = await self.read_body(request)
            if len(body) < 100_000:
                rows = parse_records(body, self.predictor.state, self.options.max_rows)
            else:  # tens of milliseconds: off the event loop, which keeps serving other requests
                rows = await asyncio.to_thread(parse_records, body, self.predictor.state, self.options.max_rows)
            columns = await self.predict_batch(rows)
            return Response(response_body(columns, self.predictor.state), media_type="application/json")
        except BadRequest:
            raise
        except ClientDisconnect:
            raise BadRequest(400, "the client went away before sending the whole body") from None
        except Exception as e:  # noqa: BLE001 - a bug, not the caller's fault: a 500 with an id, keep serving
            return internal_error(request, "prediction failed", e)

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
    async def predict_batch(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """One model call for the rows of several requests; each gets its own slice back."""
        rows = pd.DataFrame({name: np.concatenate([r[name] for r in requests]) for name in requests[0]}, copy=False)
        # In a thread: the replica keeps reading and checking requests while the model runs.
        columns = await asyncio.to_thread(self.predictor.prediction_columns, rows, SCORE_BATCH)
        bounds = np.cumsum([0] + [len(next(iter(r.values()))) for r in requests])
        return [{k: v[a:b] for k, v in columns.items()} for a, b in itertools.pairwise(bounds)]


def build_app(checkpoint: str, options: ServeOptions, surge: bool):
    return PredictorDeployment.options(
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        # Beyond that, each proxy queues at most this many more; the rest get 503 at once.
        max_queued_requests=4 * options.max_ongoing_requests * options.replicas,
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
    return ray_compat.serve_running()


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


def http_options() -> dict[str, Any]:
    """The running Serve's HTTP settings: host, port, ..."""
    return ray_compat.serve_details().get("http_options", {})


def url() -> str:
    """Where the running Serve listens (its own settings: a second `serve` cannot change them)."""
    http = http_options()
    host = http.get("host", "127.0.0.1")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{http.get('port', 8000)}"


def replicas() -> dict[str, str]:
    """{replica actor name: state} of our deployment, e.g. {"SERVE_REPLICA::app#Predictor#x1": "RUNNING"}."""
    app = ray_compat.serve_details().get("applications", {}).get(APP_NAME, {})
    found = app.get("deployments", {}).get(DEPLOYMENT, {}).get("replicas", [])
    return {r["actor_name"]: str(getattr(r["state"], "value", r["state"])) for r in found}


def run(checkpoint: str, *, epoch: int, options: ServeOptions, host: str, port: int, address: str | None) -> None:
    """The `serve` command, once the checkpoint has loaded: serve it until SIGINT or SIGTERM,
    or, when our application already runs on the cluster, roll it over to `checkpoint` and
    return (the process that started it still owns it)."""
    require("serve", "fastapi", "starlette", "uvicorn")
    signals = StopSignals()
    signals.install()
    cluster.connect(address)  # quiets Serve's logs before its processes start
    signals.install()
    check_replicas_fit(options)
    if options.token_sha256 is None and serve_started():  # it listens where it was started, whatever --host says
        running_host = http_options().get("host", "")
        require_token(running_host, f"Serve on this cluster listens on {running_host or '(every interface)'}, which")
    updating = is_running()
    embedded = not (address or os.environ.get("RAY_ADDRESS"))  # or joined a `ray start` of this machine
    if embedded and not serve_started():
        check_port_free(host, port)  # Serve's proxy is about to listen on this machine
    where = deploy(checkpoint, options, host, port)
    what = f"{checkpoint} (epoch {epoch}) with {options.replicas} replica(s)"
    if updating:
        log.info(f"updated {where} to {what}")
        return
    token = "; a bearer token is required" if options.token_sha256 else ""
    signals.waiting = True  # from the line on, Ctrl-C stops the service (exit 0), as the line says
    log.info(f"serving {what} at {where}: POST /predict, GET /health, GET /schema, GET /docs{token}; Ctrl-C stops")
    name = signals.wait()
    stop()
    log.info(f"{name}: stopped")


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
    serve.delete(APP_NAME)
    if not ray_compat.started_ray_here() and not serve.status().applications:
        serve.shutdown()
