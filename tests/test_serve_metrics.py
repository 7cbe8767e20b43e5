"""`patcher serve`'s GET /metrics and its logs: Prometheus counts equal to the requests made and to /health's, the
served version as one series that follows a hot swap, load failures counted; one JSON object per log line, a line
per /predict and /feedback request, never an input or a token. On the tiny exports (conftest.py); the swap and the
`patcher serve` process use the real S3 server."""
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import httpx
import pytest
from conftest import SERVE_TOKENS
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from patcher.pipeline.store import write_json
from patcher.serving.logs import JsonFormatter, configure
from patcher.serving.publish import latest, publish
from patcher.serving.serve import ServeSettings, Service, create_app, in_thread

SUPPORT = {"Authorization": "Bearer s3cr3t-support-0001"}
WRONG = {"Authorization": "Bearer wrong-token-000000000"}
JSON = {"content-type": "application/json"}
PRIVATE = "my-private-question-7f3a"            # an input that must never reach a log line
REPORT = {"input": PRIVATE, "output": "L0", "correct": "L1"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def client(service) -> TestClient:
    return TestClient(create_app(service), raise_server_exceptions=False)


def scrape(http) -> list:
    """GET /metrics, checked and parsed -> [(sample name, labels, value)]."""
    answer = http.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"] == CONTENT_TYPE_LATEST
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(answer.text)
            for s in family.samples]


def series(samples, name: str, *keys: str) -> dict:
    """{label values (by `keys`): value} of one sample name."""
    return {tuple(labels[k] for k in keys): value for sample, labels, value in samples if sample == name}


def one(samples, name: str, **labels) -> float:
    [value] = [v for sample, got, v in samples if sample == name and all(got.get(k) == w for k, w in labels.items())]
    return value


def test_metrics_count_the_requests_and_agree_with_health(make_service):
    http = client(make_service(max_request_bytes=4096))
    for inputs in (["a"], ["b", "c"], ["d", "e", "f"]):
        assert http.post("/predict", json={"inputs": inputs}).status_code == 200
    assert http.post("/predict", json={"inputs": []}).status_code == 422
    assert http.post("/feedback", content=b"{" + b"x" * 5000, headers={**JSON, **SUPPORT}).status_code == 413
    assert http.post("/feedback", json=REPORT, headers=WRONG).status_code == 401
    assert http.get("/no/such/path").status_code == 404
    health = http.get("/health").json()

    samples = scrape(http)
    assert series(samples, "patcher_requests_total", "route", "status") == {
        ("/predict", "200"): 3, ("/predict", "422"): 1, ("/feedback", "413"): 1, ("/feedback", "401"): 1,
        ("other", "404"): 1, ("/health", "200"): 1}
    assert one(samples, "patcher_request_duration_seconds_count", route="/predict") == 4     # every /predict
    assert one(samples, "patcher_request_duration_seconds_bucket", route="/predict", le="10.0") == 4
    assert one(samples, "patcher_request_duration_seconds_count", route="/feedback") == 2
    assert one(samples, "patcher_predictions_total") == 6                                     # inputs answered
    assert one(samples, "patcher_predict_in_flight") == 0
    assert series(samples, "patcher_served_version_info", "model", "version", "task") == {
        ("tiny", "v0001", "classification"): 1}
    refused = {reason: n for (reason,), n in series(samples, "patcher_feedback_refused_total", "reason").items()}
    assert refused == health["feedback"]["refused"] == {"unauthorized": 1, "disabled": 0, "too_large": 1,
                                                        "invalid": 0, "rate_limited": 0}
    assert one(samples, "patcher_feedback_accepted_total") == health["feedback"]["accepted"] == 0
    assert one(samples, "patcher_swaps_total") == health["swaps"] and one(samples, "patcher_load_failures_total") == 0
    # a scrape is counted as its answer starts: the next one shows it
    assert one(scrape(http), "patcher_requests_total", route="/metrics", status="200") == 1


def test_metrics_answer_while_predict_requests_wait_for_the_model(make_service):
    service = make_service(max_running=1, batch_window_ms=0)
    release, model = threading.Event(), service.current

    class Held:                          # the model is busy until released: one request runs, two wait for it
        version, task = model.version, model.task

        def __call__(self, texts, **kwargs):
            release.wait(30)
            return model(texts, **kwargs)

    service.current = Held()
    server, url = in_thread(service)
    try:
        with ThreadPoolExecutor(3) as pool, httpx.Client(base_url=url, timeout=10) as http:
            answers = [pool.submit(httpx.post, f"{url}/predict", json={"input": "x"}, timeout=60) for _ in range(3)]
            deadline = time.monotonic() + 20
            while one(scrape(http), "patcher_predict_in_flight") < 3:
                assert time.monotonic() < deadline, "the three /predict requests never showed as in flight"
                time.sleep(0.05)
            release.set()
            assert [a.result().status_code for a in answers] == [200] * 3
            samples = scrape(http)
        assert one(samples, "patcher_predict_in_flight") == 0
        assert one(samples, "patcher_request_duration_seconds_count", route="/predict") == 3
        assert one(samples, "patcher_predictions_total") == 3
    finally:
        release.set()
        server.should_exit = True


def test_the_version_series_follows_a_hot_swap_and_load_failures_count(exports, s3_env, tmp_path, monkeypatch,
                                                                       caplog):
    caplog.set_level(logging.INFO, logger="patcher")
    monkeypatch.setenv("PATCHER_FEEDBACK_TOKENS", SERVE_TOKENS)
    publish(exports / "bert-onnx", s3_env, "tiny", "v0001")
    service = Service(ServeSettings("tiny", s3_env, cache_dir=str(tmp_path), poll_s=3600)).start()
    try:
        http = client(service)
        samples = scrape(http)
        assert series(samples, "patcher_served_version_info", "version", "task") == {("v0001", "classification"): 1}
        assert one(samples, "patcher_swaps_total") == 1
        assert http.post("/feedback", json=REPORT, headers=SUPPORT).status_code == 201

        publish(exports / "llama-onnx", s3_env, "tiny", "v0002")
        service.poll()                                              # what the watcher does every poll_s
        samples = scrape(http)
        assert series(samples, "patcher_served_version_info", "model", "version", "task") == {
            ("tiny", "v0002", "generation"): 1}                     # the old version's series is gone
        assert one(samples, "patcher_swaps_total") == 2 and one(samples, "patcher_load_failures_total") == 0

        pointer = latest(s3_env, "tiny")                            # a publication whose files match nothing
        write_json(f"{service.layout.serving}/latest", {**pointer, "version": "v0003", "export_sha256": "0" * 64})
        service.poll()
        samples, health = scrape(http), http.get("/health").json()
        assert series(samples, "patcher_served_version_info", "version") == {("v0002",): 1}
        assert one(samples, "patcher_load_failures_total") == health["load_failures"] == 1
        assert one(samples, "patcher_swaps_total") == health["swaps"] == 2
        assert "PublishedVersionError" in health["last_error"]
        assert one(samples, "patcher_feedback_accepted_total") == health["feedback"]["accepted"] == 1
    finally:
        service.stop()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "patcher.serving.serve"]
    swaps = [line for line in lines if line.get("swaps")]
    assert [(s["version"], s["task"], s["model"]) for s in swaps] == [("v0001", "classification", "tiny"),
                                                                     ("v0002", "generation", "tiny")]
    [failure] = [line for line in lines if line.get("load_failures")]
    assert failure["level"] == "WARNING" and failure["version"] == "v0002"
    assert "PublishedVersionError" in failure["error"]


def test_a_request_is_one_log_line_without_its_inputs(make_service, caplog):
    caplog.set_level(logging.INFO, logger="patcher")
    http = client(make_service())
    answer = http.post("/predict", json={"inputs": [PRIVATE, "b"]}, headers={"X-Request-ID": "req-42"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-42"
    assert http.post("/feedback", json=REPORT, headers=WRONG).status_code == 401
    refused = http.post("/feedback", json={**REPORT, "correct": "NOT-A-LABEL"}, headers={**SUPPORT,
                                                                                          "X-Request-ID": "a b"})
    assert refused.status_code == 422 and re.fullmatch(r"[0-9a-f]{16}", refused.headers["x-request-id"])  # not kept
    http.get("/health"), http.get("/metrics")                      # polled: counted, not logged

    texts = [JsonFormatter().format(r) for r in caplog.records if r.name == "patcher.serving.requests"]
    lines = [json.loads(text) for text in texts]
    assert [(line["route"], line["status"], line.get("inputs"), line.get("client")) for line in lines] == [
        ("/predict", 200, 2, None), ("/feedback", 401, None, None), ("/feedback", 422, None, "support-team")]
    predict = lines[0]
    assert predict["request_id"] == "req-42" and predict["version"] == "v0001" and predict["method"] == "POST"
    assert predict["level"] == "INFO" and predict["msg"] == f"POST /predict 200 {predict['ms']:.1f} ms"
    assert 0 <= predict["ms"] < 10_000 and lines[2]["request_id"] == refused.headers["x-request-id"]
    for text in [*texts, caplog.text]:
        assert PRIVATE not in text and "s3cr3t" not in text and "wrong-token" not in text


def test_a_server_error_is_counted_and_logged(make_service, caplog):
    caplog.set_level(logging.INFO, logger="patcher")
    service = make_service()
    service.submit = lambda *args: 1 / 0                           # an exception no route turns into an answer
    http = client(service)
    assert http.post("/predict", json={"input": PRIVATE}).status_code == 500
    samples = scrape(http)
    assert series(samples, "patcher_requests_total", "route", "status") == {("/predict", "500"): 1}
    assert one(samples, "patcher_predict_in_flight") == 0 and one(samples, "patcher_predictions_total") == 0
    [line] = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "patcher.serving.requests"]
    assert (line["route"], line["status"]) == ("/predict", 500)


def test_the_json_formatter_writes_one_object_a_line():
    stream, logger = io.StringIO(), logging.getLogger("patcher.tests.json-lines")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        before = datetime.now().astimezone()
        logger.info("serving %s", "v0002", extra={"model": "m", "version": "v0002", "ms": 1.5, "level": "spoofed"})
        logger.warning("two\nlines")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    texts = stream.getvalue().splitlines()
    assert len(texts) == 3
    first, second, third = map(json.loads, texts)
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert first == {"ts": first["ts"], "level": "INFO", "logger": "patcher.tests.json-lines", "msg": "serving v0002",
                     "model": "m", "version": "v0002", "ms": 1.5}           # no LogRecord internals, no overwrite
    assert RFC3339_UTC.match(first["ts"])
    assert abs(datetime.fromisoformat(first["ts"].replace("Z", "+00:00")) - before) < timedelta(seconds=60)
    assert second["msg"] == "two\nlines" and second["level"] == "WARNING"
    assert third["level"] == "ERROR" and "ValueError: boom" in third["exc"]


@pytest.fixture
def restored_loggers():
    """configure() changes process-wide loggers: put them back for the tests after this one."""
    saved = {name: (list(lg.handlers), lg.level, lg.propagate)
             for name in ("patcher", "uvicorn") for lg in [logging.getLogger(name)]}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_serve_logs_json_by_default_and_text_on_request(monkeypatch, restored_loggers):
    import patcher.serving.serve as serve_module
    from patcher.cli import main

    chosen = []
    monkeypatch.setattr(serve_module, "serve", lambda settings, host, port: chosen.append(settings.log_format))
    assert main(["serve", "--model", "m", "--root", "s3://r"]) == 0
    assert main(["serve", "--model", "m", "--root", "s3://r", "--log-format", "text"]) == 0
    assert chosen == ["json", "text"]

    for log_format, parses in (("json", True), ("text", False)):
        stream = io.StringIO()
        configure(log_format, stream=stream)
        logging.getLogger("patcher.serving.serve").info("served", extra={"version": "v1"})
        logging.getLogger("uvicorn.error").warning("Uvicorn running")     # uvicorn.run sets its level; a test's may not
        texts = stream.getvalue().splitlines()
        assert len(texts) == 2                                      # one handler each time: no duplicates
        if parses:
            assert [json.loads(t)["logger"] for t in texts] == ["patcher.serving.serve", "uvicorn.error"]
        else:
            assert texts[0].endswith(" INFO patcher.serving.serve: served") and not texts[0].startswith("{")
    with pytest.raises(ValueError, match="log format"):
        configure("xml")


def test_patcher_serve_writes_json_lines_and_no_access_log(exports, s3_env, tmp_path):
    publish(exports / "bert-onnx", s3_env, "tiny", "v0001")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PATCHER_FEEDBACK_TOKENS": SERVE_TOKENS, "PATCHER_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "patcher.cli", "serve", "--model", "tiny", "--root", s3_env,
                                "--port", str(port), "--poll", "3600"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, "patcher serve did not start"
                time.sleep(0.2)
            assert http.post("/predict", json={"inputs": [PRIVATE]}).status_code == 200
            assert http.post("/feedback", json=REPORT, headers=WRONG).status_code == 401
            assert one(scrape(http), "patcher_requests_total", route="/predict", status="200") == 1
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    lines = [json.loads(text) for text in stderr.splitlines() if text.strip()]     # every line is JSON
    assert all(RFC3339_UTC.match(line["ts"]) and line["level"] and line["msg"] for line in lines)
    assert [(line["route"], line["status"]) for line in lines if line["logger"] == "patcher.serving.requests"] == [
        ("/predict", 200), ("/feedback", 401)]                      # and no uvicorn access line besides
    assert any(line["logger"] == "patcher.serving.serve" and line.get("version") == "v0001" for line in lines)
    assert any(line["logger"].startswith("uvicorn") and "Uvicorn running" in line["msg"] for line in lines)
    assert PRIVATE not in stderr and "s3cr3t" not in stderr and "wrong-token" not in stderr
