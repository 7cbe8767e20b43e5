"""The serving consumer: an HTTP service on 127.0.0.1 over the latest published ONNX version of a model
(patcher/serving/publish.py), that closes the loop by logging user-reported mistakes where the pipeline reads them.

  patcher serve --model NAME [--root s3://patcher] [--port 8000]      # a catalog model's latest version

  POST /predict   {"inputs": [...]} or {"input": "..."}, optional "max_new_tokens"
                  -> {"model", "version", "predictions": [{"label", "scores"} or {"answer"}]}
  GET  /health    -> {"model", "version", "task", "loaded_at", "published_at", "requests", "swaps", ...}
  POST /feedback  {"input", "output", "correct", optional "rephrases", "phrasings"} -> the error record, written as one
                  batch file under ROOT/errors/MODEL/YYYY/MM/DD/HH/ (the pipeline's input)

Hot swap: a watcher thread reads serving/MODEL/latest every `poll_s`; a new version is downloaded, verified
against its checksums and loaded next to the current one, then a single reference assignment makes it
current. Each request keeps the model it started with until it returns, so a swap drops no request and no
request sees a half-loaded model. A version that fails to download or load is logged and the current one
stays.
"""
from __future__ import annotations

import itertools
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from patcher.engine.records import ErrorRecord, RecordError, parse_record, stamp, utc_now
from patcher.pipeline.store import Layout, write_text

from .onnx_model import OnnxModel

log = logging.getLogger("patcher.serving.serve")


@dataclass
class ServeSettings:
    """`patcher serve` options."""

    model: str                          # production model name (serving/MODEL/ under the root)
    root: str = "s3://patcher"          # the pipeline's S3 root
    cache_dir: str = ""                 # where published versions are downloaded ("": PATCHER_CACHE/serving)
    poll_s: float = 5.0                 # how often to look for a newly published version
    max_batch: int = 64                 # inputs per /predict request at most
    max_new_tokens: int = 16            # generation: the longest answer a request may ask for


class Service:
    """The current model, the watcher that replaces it, and the feedback writer."""

    def __init__(self, settings: ServeSettings):
        from patcher.engine.files import cache_dir

        self.settings = settings
        self.layout = Layout(settings.root, settings.model)
        self.cache = Path(settings.cache_dir) if settings.cache_dir else cache_dir() / "serving"
        self.current: OnnxModel | None = None
        self.pointer: dict | None = None
        self.loaded_at: str | None = None
        self.swaps = 0
        self._requests = itertools.count(1)      # next() is atomic: no lock on the request path
        self.requests = 0
        self.last_error: str | None = None
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
        log.info("%s: serving %s (%s)", self.settings.model, pointer["version"], pointer["uri"])
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            try:
                self.refresh()
                self.last_error = None
            except Exception as error:  # noqa: BLE001 (keep serving the current version, say why)
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("%s: new version not loaded, still serving %s: %s", self.settings.model,
                            self.pointer and self.pointer["version"], self.last_error)

    def start(self) -> "Service":
        if not self.refresh():
            raise RuntimeError(f"nothing published under {self.layout.serving}/latest: export an approved version "
                               f"first (the pipeline does, or `patcher export --publish`)")
        self._watcher = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def predict(self, texts: list[str], max_new_tokens: int) -> dict:
        model = self.current                  # this request's model, whatever a swap does meanwhile
        self.requests = next(self._requests)
        return {"model": self.settings.model, "version": model.version,
                "predictions": model(texts, max_new_tokens=max_new_tokens)}

    def feedback(self, text: str, output: str, correct: str, rephrases: list[str] = (),
                 phrasings: list[str] = ()) -> ErrorRecord:
        """A user-reported mistake -> a checked error record in ROOT/errors/MODEL/ (raises RecordError)."""
        model = self.current
        now = utc_now()
        rid = f"feedback-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        record = parse_record({"id": rid, "model": self.settings.model, "task": model.task, "input": text,
                               "prediction": output, "target": correct, "logged_at": stamp(now),
                               "rephrases": list(rephrases), "phrasings": list(phrasings)}, "feedback")
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
                "swaps": self.swaps, "last_error": self.last_error}


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


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title=f"patcher serve: {service.settings.model}")

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:        # sync: FastAPI runs it in its thread pool
        texts = request.inputs if request.inputs is not None else [request.input] if request.input is not None else []
        if not texts or len(texts) > service.settings.max_batch or not all(t.strip() for t in texts):
            raise HTTPException(422, f"give `input` or 1-{service.settings.max_batch} non-empty `inputs`")
        if request.max_new_tokens > service.settings.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens is at most {service.settings.max_new_tokens}")
        return service.predict(texts, request.max_new_tokens)

    @app.post("/feedback", status_code=201)
    def feedback(request: FeedbackRequest) -> dict:
        try:
            record = service.feedback(request.input, request.output, request.correct, request.rephrases,
                                          request.phrasings)
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

    service = Service(settings).start()
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="info")
    finally:
        service.stop()

