"""The serving consumer: an HTTP service on 127.0.0.1 over the latest published ONNX version of a model
(patcher/serving/publish.py), that closes the loop by logging user-reported mistakes where the pipeline reads them.

  patcher serve --model NAME [--root s3://patcher] [--port 8000]      # a catalog model's latest version
  PATCHER_FEEDBACK_TOKENS=support-team:TOKEN,app:TOKEN2 patcher serve ...   # who may post /feedback

  POST /predict   {"inputs": [...]} or {"input": "..."}, optional "max_new_tokens"
                  -> {"model", "version", "predictions": [{"label", "scores"} or {"answer"}]}
  GET  /health    -> {"model", "version", "task", "loaded_at", "published_at", "requests", "swaps", "load_failures",
                  "feedback": {"auth", "accepted", "refused": {reason: count}}, ...}
  POST /feedback  Authorization: Bearer TOKEN; {"input", "output", "correct", optional "rephrases", "phrasings"}
                  -> 201, the error record (its `source` is feedback:NAME, the token's owner), written as one
                  batch file under ROOT/errors/MODEL/YYYY/MM/DD/HH/ (the pipeline's input)
  GET  /metrics   -> Prometheus text (ServiceMetrics): requests, latency, predictions, version, swaps, feedback
  Logs: JSON lines on stderr (ts, level, logger, msg, fields; logs.py), one per /predict and /feedback, no inputs

Trust: what /feedback accepts is trained into the model, so only holders of a token may post it. Tokens come
from the environment alone (PATCHER_FEEDBACK_TOKENS, comma-separated name:token pairs; never logged), are
compared in constant time, and each name has its own token bucket (`feedback_per_minute`, the same burst).
Without tokens /feedback is refused, unless the service was started with --open-feedback (records then say
feedback:anonymous and share one bucket).

Bounds: a request body is at most `max_request_bytes` (refused from Content-Length, or while it is read,
before anything parses it), /predict takes 1-`max_batch` inputs of at most `max_input_chars` characters,
inputs are truncated to the model's longest input in tokens and run a bounded number of tokens at a time
(onnx_model.py). Concurrent /predict requests share model runs (batching.py: a `batch_window_ms` wait, at most
`max_batch_rows` inputs a run (or one request's, up to `max_batch`), `max_running` runs at once, `max_waiting` requests waiting): the memory a burst
leaves the process holding is bounded. Refusals are JSON {"detail": reason}, and never echo the input:

  401  /feedback without a valid token (WWW-Authenticate: Bearer)
  403  /feedback while no token is configured and feedback is not open
  413  a body over max_request_bytes, an input over max_input_chars
  422  a malformed request, a lone surrogate in a text (not valid Unicode), a record the pipeline would reject
  429  /feedback over its client's rate (Retry-After: seconds)
  503  /predict while max_waiting requests wait for the model already (Retry-After: 1)

Hot swap: a watcher thread reads serving/MODEL/latest every `poll_s`; a new version is downloaded, verified
against its checksums and loaded next to the current one, then a single reference assignment makes it
current. Each request keeps the model it started with until it returns, so a swap drops no request and no
request sees a half-loaded model. A version that fails to download or load is logged and the current one
stays.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import math
import os
import re
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from patcher.engine.records import ErrorRecord, RecordError, parse_record, stamp, utc_now
from patcher.pipeline.store import Layout, write_text

from .batching import Batcher, Busy
from .metrics import ObserveRequests, ServiceMetrics
from .onnx_model import OnnxModel

log = logging.getLogger("patcher.serving.serve")

TOKENS_ENV = "PATCHER_FEEDBACK_TOKENS"
MIN_TOKEN = 16                                              # characters: a shorter token is guessed in reach
CLIENT_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")      # it becomes the record's source, feedback:NAME
SURROGATE = re.compile("[\ud800-\udfff]")                   # JSON's \ud800 escape parses to one; UTF-8 has none
REFUSALS = {401: "unauthorized", 403: "disabled", 413: "too_large", 422: "invalid", 429: "rate_limited"}


@dataclass
class ServeSettings:
    """`patcher serve` options."""

    model: str                          # production model name (serving/MODEL/ under the root)
    root: str = "s3://patcher"          # the pipeline's S3 root
    cache_dir: str = ""                 # where published versions are downloaded ("": PATCHER_CACHE/serving)
    poll_s: float = 5.0                 # how often to look for a newly published version
    max_batch: int = 64                 # inputs per /predict request at most
    max_new_tokens: int = 16            # generation: the longest answer a request may ask for
    max_request_bytes: int = 256 * 1024  # a request body at most (64 inputs of 4000 characters fit)
    max_input_chars: int = 4000         # characters per /predict input at most
    max_running: int = 1                # model runs at once (batches), the rest wait: each run uses every core
                                        # already, and each concurrent one adds its activations to what it keeps
    batch_window_ms: float = 5.0        # how long a /predict request waits for others to share its model run at
                                        # most (and at most a tenth of the last run's time)
    max_batch_rows: int = 32            # inputs in one model run at most (batching.py)
    max_waiting: int = 256              # /predict requests waiting for the model at most; more get 503
    open_feedback: bool = False         # /feedback without a token (source feedback:anonymous); off: tokens only
    feedback_per_minute: int = 30       # /feedback requests per client (token name) a minute, and its burst
    log_format: str = "json"            # `patcher serve`'s stderr: json (a JSON object a line) or text


def feedback_tokens(value: str) -> dict[str, str]:
    """PATCHER_FEEDBACK_TOKENS ('name:token,name2:token2') -> {name: token}; a bad entry is named by its place,
    never by its text (it holds a secret)."""
    tokens = {}
    for place, entry in enumerate((e.strip() for e in value.split(",")), 1):
        if not entry:
            continue
        name, _, token = entry.partition(":")
        if not CLIENT_NAME.match(name) or not token.strip():
            raise ValueError(f"{TOKENS_ENV}: entry {place} is not name:token (a name of 1-64 letters, digits "
                             f"and . _ @ -, then a token)")
        if name in tokens:
            raise ValueError(f"{TOKENS_ENV}: {name!r} is named twice")
        if len(token.strip()) < MIN_TOKEN:
            raise ValueError(f"{TOKENS_ENV}: {name!r}'s token is shorter than {MIN_TOKEN} characters (guessable)")
        tokens[name] = token.strip()
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Refused(Exception):
    """A /feedback request the gate turns away: its HTTP status, the reason and headers."""

    def __init__(self, status: int, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


class Bucket:
    """A token bucket: `per_minute` requests a minute, as many at once."""

    def __init__(self, per_minute: int):
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.level, self.at = self.capacity, time.monotonic()

    def take(self) -> float:
        """Takes one request. -> 0, or the seconds until one is there (nothing taken)."""
        now = time.monotonic()
        self.level, self.at = min(self.capacity, self.level + (now - self.at) * self.rate), now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


class FeedbackGate:
    """Who may post /feedback (a token's owner, or anyone when open) and how often; one bucket per name, so
    memory is bounded by the configured names, not by the clients."""

    def __init__(self, tokens: dict[str, str], open_feedback: bool, per_minute: int):
        if per_minute < 1:
            raise ValueError(f"feedback_per_minute must be at least 1, got {per_minute}")
        self._tokens = {name: _digest(token) for name, token in tokens.items()}   # equal lengths: no length leak
        self.open, self.per_minute = open_feedback, per_minute
        self._buckets = {name: Bucket(per_minute) for name in [*tokens, "anonymous"]}
        self._guesses = Bucket(per_minute)          # wrong tokens, from anyone: guessing is rate-limited too
        self._lock = threading.Lock()
        self.accepted = 0
        self.refused = {reason: 0 for reason in REFUSALS.values()}

    @property
    def auth(self) -> str:
        return "open" if self.open else "tokens" if self._tokens else "disabled"

    def who(self, authorization: str | None) -> str:
        """The client's name from `Authorization: Bearer TOKEN` ('anonymous' when open and none is given)."""
        if not self._tokens and not self.open:
            raise Refused(403, f"feedback is disabled: set {TOKENS_ENV} (name:token,...) to accept it from "
                               f"token holders")
        scheme, _, given = (authorization or "").strip().partition(" ")
        if not authorization and self.open:
            return "anonymous"
        if scheme.lower() != "bearer" or not given.strip():
            raise Refused(401, f"feedback needs `Authorization: Bearer TOKEN`: a token from {TOKENS_ENV}",
                          {"WWW-Authenticate": "Bearer"})
        given_digest, match = _digest(given.strip()), None
        for name, token in self._tokens.items():      # every one compared: the time says nothing of which matched
            if hmac.compare_digest(given_digest, token):
                match = name
        if match is None:
            with self._lock:
                wait = self._guesses.take()
            if wait:
                raise Refused(429, f"too many wrong tokens: retry in {math.ceil(wait)} s",
                              {"Retry-After": str(math.ceil(wait))})
            raise Refused(401, f"the bearer token is not one of {TOKENS_ENV}",
                          {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return match

    def admit(self, authorization: str | None) -> str:
        """-> the client's name, or raises Refused (401, 403, 429)."""
        name = self.who(authorization)
        with self._lock:
            wait = self._buckets[name].take()
        if wait:
            retry = math.ceil(wait)
            raise Refused(429, f"feedback from {name} is over {self.per_minute} a minute: retry in {retry} s",
                          {"Retry-After": str(retry)})
        return name

    def count(self, status: int) -> None:
        if status == 201:
            self.accepted += 1
        elif status >= 400:
            reason = REFUSALS.get(status, str(status))
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def health(self) -> dict:
        return {"auth": self.auth, "clients": len(self._tokens), "per_minute": self.per_minute,
                "accepted": self.accepted, "refused": dict(self.refused)}


class Service:
    """The current model, the watcher that replaces it, and the feedback writer."""

    def __init__(self, settings: ServeSettings):
        from patcher.engine.files import cache_dir

        self.settings = settings
        self.layout = Layout(settings.root, settings.model)
        self.cache = Path(settings.cache_dir) if settings.cache_dir else cache_dir() / "serving"
        tokens = feedback_tokens(os.environ.get(TOKENS_ENV, ""))        # the environment only: never argv
        self.gate = FeedbackGate(tokens, settings.open_feedback, settings.feedback_per_minute)
        if self.gate.open:
            log.warning("%s: /feedback is open: anyone who reaches this port can post corrections that are "
                        "trained into the model", settings.model, extra={"model": settings.model})
        log.info("%s: /feedback %s (%s)", settings.model, self.gate.auth, ", ".join(tokens) or "no tokens",
                 extra={"model": settings.model, "auth": self.gate.auth, "clients": list(tokens)})
        self.current: OnnxModel | None = None
        self.pointer: dict | None = None
        self.loaded_at: str | None = None
        self.swaps = 0
        self._requests = itertools.count(1)      # next() is atomic: no lock on the request path
        if settings.max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {settings.max_running}")
        self.batcher = Batcher(settings.batch_window_ms / 1000, settings.max_batch_rows, settings.max_running,
                               settings.max_waiting)
        self.requests = 0
        self.last_error: str | None = None
        self.load_failures = 0
        self.metrics = ServiceMetrics(self)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def refresh(self) -> bool:
        """Loads the published version if it is not the current one. -> whether it swapped."""
        from .publish import fetch, latest

        pointer = latest(self.settings.root, self.settings.model)
        if pointer is None or (self.pointer and pointer["export_sha256"] == self.pointer["export_sha256"]):
            return False
        model = OnnxModel(fetch(pointer, self.cache), pointer["version"])   # loaded beside the current one
        self.current, self.pointer, self.loaded_at = model, pointer, stamp()  # the swap: one assignment
        self.swaps += 1
        log.info("%s: serving %s (%s)", self.settings.model, pointer["version"], pointer["uri"],
                 extra={"model": self.settings.model, "version": pointer["version"], "task": model.task,
                        "uri": pointer["uri"], "swaps": self.swaps})
        return True

    def poll(self) -> None:
        """The watcher's look for a new version: a failure is counted and logged, the current version stays."""
        try:
            self.refresh()
            self.last_error = None
        except Exception as error:  # noqa: BLE001 (keep serving the current version, say why)
            self.load_failures += 1
            self.last_error = f"{type(error).__name__}: {error}"
            current = self.pointer and self.pointer["version"]
            log.warning("%s: new version not loaded, still serving %s: %s", self.settings.model, current,
                        self.last_error, extra={"model": self.settings.model, "version": current,
                                                "error": self.last_error, "load_failures": self.load_failures})

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            self.poll()

    def start(self) -> "Service":
        if not self.refresh():
            raise RuntimeError(f"nothing published under {self.layout.serving}/latest: export an approved version "
                               f"first (the pipeline does, or `patcher export --publish`)")
        self._watcher = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.batcher.stop()

    def submit(self, texts: list[str], max_new_tokens: int) -> tuple[str, Future]:
        """-> (the version answering, a Future of its predictions), batched with concurrent requests (raises Busy)."""
        model = self.current                  # this request's model, whatever a swap does meanwhile
        self.requests = next(self._requests)
        return model.version, self.batcher.submit(model, texts, max_new_tokens)


    def feedback(self, text: str, output: str, correct: str, rephrases: list[str] = (),
                 phrasings: list[str] = (), client: str = "anonymous") -> ErrorRecord:
        """A mistake reported by `client` (a token's name) -> a checked error record in ROOT/errors/MODEL/, its
        source feedback:CLIENT (raises RecordError)."""
        model = self.current
        now = utc_now()
        rid = f"feedback-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        record = parse_record({"id": rid, "model": self.settings.model, "task": model.task, "input": text,
                               "prediction": output, "target": correct, "logged_at": stamp(now),
                               "rephrases": list(rephrases), "phrasings": list(phrasings),
                               "source": f"feedback:{client}"}, "feedback")
        if model.task == "classification" and correct not in model.labels.values():
            raise RecordError("feedback", rid, [f"correct must be one of {sorted(model.labels.values())}, "
                                                f"got {correct!r}"])
        write_text(f"{self.layout.errors}/{now:%Y/%m/%d/%H}/{rid}.jsonl", record.to_json() + "\n",
                   content_type="application/x-ndjson")
        return record

    def health(self) -> dict:
        return {"model": self.settings.model, "version": self.current.version if self.current else None,
                "task": self.current.task if self.current else None, "loaded_at": self.loaded_at,
                "published_at": (self.pointer or {}).get("published_at"), "requests": self.requests,
                "swaps": self.swaps, "last_error": self.last_error, "load_failures": self.load_failures,
                "feedback": self.gate.health()}


class PredictRequest(BaseModel):
    input: str | None = None
    inputs: list[str] | None = None
    max_new_tokens: int = Field(8, ge=1)


class FeedbackRequest(BaseModel):
    input: str
    output: str
    correct: str
    rephrases: list[str] = []
    phrasings: list[str] = []


def check_texts(texts: dict[str, str], max_chars: int | None = None) -> None:
    """{field: text}: 413 for a text over `max_chars`, 422 for one that is not valid Unicode (it cannot be
    tokenized or written as UTF-8); the reason names the field, never the text."""
    for name, text in texts.items():
        if max_chars is not None and len(text) > max_chars:
            raise HTTPException(413, f"{name} is {len(text)} characters, more than {max_chars}")
        if SURROGATE.search(text):
            raise HTTPException(422, f"{name} contains a lone surrogate (not valid Unicode)")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app parses it, from its
    Content-Length or, without one (chunked), once the bytes read pass the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def reason(self, size: int | None) -> str:
        said = f"{size} bytes, " if size else ""
        return f"the request body is {said}more than the {self.limit} bytes this service takes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": self.reason(int(length))}, 413)(scope, receive, send)
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:                 # raised inside the app's body read: the route answers 413
                raise HTTPException(413, self.reason(None))
            return message

        await self.app(scope, bounded, send)


def create_app(service: Service) -> FastAPI:
    settings = service.settings
    app = FastAPI(title=f"patcher serve: {settings.model}")
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(ObserveRequests, metrics=service.metrics, gate=service.gate)   # outer: sees BodyLimit's 413s

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input: a 256 KiB echo, or a 500 when it is not valid Unicode
        return JSONResponse({"detail": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                                        for e in error.errors()]}, 422)

    def feedback_client(authorization: str | None = Header(None)) -> str:
        try:
            return service.gate.admit(authorization)
        except Refused as refused:
            raise HTTPException(refused.status, refused.reason, refused.headers) from None

    @app.get("/health")
    async def health() -> dict:              # on the event loop: answers while every worker thread is busy
        return service.health()

    @app.get("/metrics")
    async def metrics() -> Response:         # on the event loop too, like /health
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict")
    async def predict(request: PredictRequest, http: Request) -> dict:
        texts = request.inputs if request.inputs is not None else [request.input] if request.input is not None else []
        if not texts or len(texts) > settings.max_batch or not all(t.strip() for t in texts):
            raise HTTPException(422, f"give `input` or 1-{settings.max_batch} non-empty `inputs`")
        names = [f"inputs[{i}]" for i in range(len(texts))] if request.inputs is not None else ["input"]
        check_texts(dict(zip(names, texts)), settings.max_input_chars)
        if request.max_new_tokens > settings.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens is at most {settings.max_new_tokens}")
        try:
            version, predictions = service.submit(texts, request.max_new_tokens)
        except Busy as busy:
            raise HTTPException(503, f"busy: {busy}; retry shortly", {"Retry-After": "1"}) from None
        # the request waits on the event loop, not in a worker thread: /feedback keeps its threads under a burst
        answer = {"model": settings.model, "version": version, "predictions": await asyncio.wrap_future(predictions)}
        service.metrics.predictions.inc(len(answer["predictions"]))
        http.state.log = {"inputs": len(texts), "version": answer["version"]}       # the request's log line
        return answer

    @app.post("/feedback", status_code=201)
    def feedback(request: FeedbackRequest, http: Request, client: str = Depends(feedback_client)) -> dict:
        http.state.log = {"client": client}       # the token's name, never the token
        check_texts({"input": request.input, "output": request.output, "correct": request.correct,
                     **{f"rephrases[{i}]": t for i, t in enumerate(request.rephrases)},
                     **{f"phrasings[{i}]": t for i, t in enumerate(request.phrasings)}})
        try:
            record = service.feedback(request.input, request.output, request.correct, request.rephrases,
                                      request.phrasings, client=client)
        except RecordError as error:
            raise HTTPException(422, str(error)) from None
        return {"recorded": record.to_dict(), "where": service.layout.errors}

    return app


def in_thread(service: Service, host: str = "127.0.0.1"):
    """The app on a free port in a daemon thread (tests, benchmarks). -> (uvicorn server, base URL); set
    `server.should_exit = True` to stop it."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, name="uvicorn", daemon=True).start()
    while not server.started:
        threading.Event().wait(0.05)
    return server, f"http://{host}:{port}"


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    from .logs import configure

    configure(settings.log_format)           # first: the service's own startup lines are in the format too
    service = Service(settings).start()
    try:
        # uvicorn keeps the loggers configured above (log_config=None); no access log: the requests logger
        # already writes a line per /predict and /feedback
        uvicorn.run(create_app(service), host=host, port=port, log_level="info", log_config=None, access_log=False)
    finally:
        service.stop()
