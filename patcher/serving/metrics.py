"""What `patcher serve` tells its operators: Prometheus metrics (GET /metrics) and a structured log line per
/predict and /feedback request. Counts the service keeps anyway (feedback in its gate, swaps, load failures, the
current version) are read from it at each scrape, so /health and /metrics report one set of numbers."""
from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, InfoMetricFamily

requests_log = logging.getLogger("patcher.serving.requests")      # a line per /predict and /feedback request

ROUTES = ("/predict", "/feedback", "/health", "/metrics")    # metric labels; any other path is `other` (bounded)
LOGGED_ROUTES = ("/predict", "/feedback")                    # timed and logged; /health and /metrics are polled
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")          # a client's X-Request-ID is kept only if it is this


class ServiceState:
    """A Prometheus collector over what the service counts anyway (feedback in its gate, swaps, load failures,
    the current version), read at each scrape: /health and /metrics report one set of numbers."""

    def __init__(self, service):             # a serve.Service
        self.service = service

    def collect(self):
        service, gate = self.service, self.service.gate
        if service.current is not None:        # one series, the current version's: a swap replaces it
            yield InfoMetricFamily("patcher_served_version", "the model version this service answers with", value={
                "model": service.settings.model, "version": service.current.version, "task": service.current.task})
        yield CounterMetricFamily("patcher_swaps", "versions loaded and made current, the first one included",
                                  value=service.swaps)
        yield CounterMetricFamily("patcher_load_failures", "published versions that failed to download or load "
                                  "(the current one kept serving)", value=service.load_failures)
        yield CounterMetricFamily("patcher_feedback_accepted", "/feedback reports recorded (201)", value=gate.accepted)
        refused = CounterMetricFamily("patcher_feedback_refused", "/feedback requests refused, by reason",
                                      labels=["reason"])
        for reason, count in dict(gate.refused).items():
            refused.add_metric([reason], count)
        yield refused


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of its own: one process may hold several services (tests)."""

    SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)    # 1 ms to 10 s

    def __init__(self, service):             # a serve.Service
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("patcher_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=registry)
        self.duration = Histogram("patcher_request_duration_seconds", "seconds until /predict or /feedback "
                                  "starts its answer", ["route"], buckets=self.SECONDS, registry=registry)
        self.predictions = Counter("patcher_predictions", "inputs /predict answered", registry=registry)
        self.predicting = Gauge("patcher_predict_in_flight", "/predict requests in the service (running the "
                                "model or waiting for it)", registry=registry)
        registry.register(ServiceState(service))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ObserveRequests:
    """ASGI middleware, the outermost: every answer, whoever gave it (a route, BodyLimit's 413, validation's 422, a
    500), is counted by route and status, and /feedback's in the gate (/health and /metrics read it there).
    /predict and /feedback are timed and logged, a line each, with what the route noted in `request.state.log`:
    never a body, nor a header but a well-formed X-Request-ID. All of it happens as the answer starts: a client
    that reads /metrics after its answer sees it counted."""

    def __init__(self, app, metrics: ServiceMetrics, gate):       # gate: serve.FeedbackGate
        self.app, self.metrics, self.gate = app, metrics, gate

    def answered(self, scope, route: str, status: int, started: float, request_id: str) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        if route == "/feedback":
            self.gate.count(status)
        if route in LOGGED_ROUTES:
            seconds = time.perf_counter() - started
            self.metrics.duration.labels(route).observe(seconds)
            ms = round(seconds * 1000, 1)
            requests_log.info("%s %s %d %.1f ms", scope["method"], route, status, ms, extra={
                "route": route, "method": scope["method"], "status": status, "ms": ms, "request_id": request_id,
                **scope["state"].get("log", {})})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, route = time.perf_counter(), scope["path"] if scope["path"] in ROUTES else "other"
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})           # the dict `request.state` writes to, read back in answered()
        started_answer = False

        async def observed(message):
            nonlocal started_answer
            if message["type"] == "http.response.start":
                started_answer = True
                self.answered(scope, route, message["status"], started, request_id)
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        if route == "/predict":
            self.metrics.predicting.inc()
        try:
            await self.app(scope, receive, observed)
        except Exception:
            if not started_answer:               # Starlette's outer error handler answers 500 after us
                self.answered(scope, route, 500, started, request_id)
            raise
        finally:
            if route == "/predict":
                self.metrics.predicting.dec()
