"""`patcher serve`'s trust and bounds: /feedback only from token holders (PATCHER_FEEDBACK_TOKENS), at a rate per
holder, each record naming its sender; request bodies, inputs and token lengths bounded; no 500 on text that is
not valid Unicode; /health counting what /feedback accepted and refused. On tiny random models exported to ONNX
(real onnxruntime sessions); the records are written to the real S3 server."""
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from patcher.pipeline import store
from patcher.serving.serve import ServeSettings, create_app, in_thread

SUPPORT = {"Authorization": "Bearer s3cr3t-support-0001"}
REPORT = {"input": "the capital of peru is", "output": "L0", "correct": "L1"}
JSON = {"content-type": "application/json"}


def client(service) -> TestClient:
    return TestClient(create_app(service), raise_server_exceptions=False)


def test_feedback_is_refused_while_no_token_is_configured(make_service):
    service = make_service(tokens=None)
    http = client(service)
    answer = http.post("/feedback", json=REPORT, headers=SUPPORT)
    assert answer.status_code == 403 and "PATCHER_FEEDBACK_TOKENS" in answer.json()["detail"]
    health = http.get("/health").json()
    assert health["feedback"]["auth"] == "disabled" and health["feedback"]["refused"]["disabled"] == 1
    assert health["version"] == "v0001" and http.post("/predict", json={"input": "hello"}).status_code == 200


def test_feedback_needs_a_bearer_token_from_the_environment(make_service, caplog):
    caplog.set_level("DEBUG")
    service = make_service()
    http = client(service)
    for headers in ({}, {"Authorization": "Bearer s3cr3t-support-000"}, {"Authorization": "Basic s3cr3t-app-000002"},
                    {"Authorization": "Bearer"}, {"Authorization": "Bearer s3cr3t-support-0001x"}):
        answer = http.post("/feedback", json=REPORT, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "PATCHER_FEEDBACK_TOKENS" in answer.json()["detail"] and "s3cr3t" not in answer.text
    health = http.get("/health").json()["feedback"]
    assert health == {"auth": "tokens", "clients": 2, "per_minute": 30, "accepted": 0,
                      "refused": {"unauthorized": 5, "disabled": 0, "too_large": 0, "invalid": 0, "rate_limited": 0}}
    assert "support-team" in caplog.text and "s3cr3t" not in caplog.text          # names are logged, tokens never


def test_token_list_errors_name_the_entry_not_the_secret():
    from patcher.serving.serve import feedback_tokens

    assert feedback_tokens(" a:x1-long-enough-token, b.c@d:y:2-long-enough-token ,") == {
        "a": "x1-long-enough-token", "b.c@d": "y:2-long-enough-token"}
    assert feedback_tokens("") == {}
    for bad in ("no-colon-s3cr3t", "a:s3cr3t-long-enough,a:s3cr3t-long-enough2", "bad name:s3cr3t", "a:  ", ":s3cr3t",
                "a:s3cr3t-short"):
        with pytest.raises(ValueError, match="PATCHER_FEEDBACK_TOKENS") as error:
            feedback_tokens(bad)
        assert "s3cr3t" not in str(error.value)


def test_guessing_tokens_is_rate_limited(make_service):
    http = client(make_service(feedback_per_minute=3))
    guesses = [http.post("/feedback", json=REPORT, headers={"Authorization": f"Bearer guess-{i:012d}"}).status_code
               for i in range(4)]
    assert guesses == [401, 401, 401, 429]
    assert http.post("/feedback", json={**REPORT, "correct": "NOT-A-LABEL"}, headers=SUPPORT).status_code == 422


def test_feedback_is_rate_limited_per_token(make_service):
    service = make_service(feedback_per_minute=2)
    http = client(service)
    wrong = {**REPORT, "correct": "NOT-A-LABEL"}           # refused after the gate: no S3 write, a bucket token spent
    assert [http.post("/feedback", json=wrong, headers=SUPPORT).status_code for _ in range(2)] == [422, 422]
    over = http.post("/feedback", json=wrong, headers=SUPPORT)
    assert over.status_code == 429 and "support-team" in over.json()["detail"]
    assert 1 <= int(over.headers["retry-after"]) <= 30
    other = http.post("/feedback", json=wrong, headers={"Authorization": "Bearer s3cr3t-app-000002"})
    assert other.status_code == 422                          # its own bucket
    refused = http.get("/health").json()["feedback"]["refused"]
    assert refused["rate_limited"] == 1 and refused["invalid"] == 3


def test_feedback_records_carry_their_source(make_service, s3_env):
    service = make_service(root=s3_env)
    http = client(service)
    answer = http.post("/feedback", json=REPORT, headers=SUPPORT)
    assert answer.status_code == 201, answer.text
    assert answer.json()["recorded"]["source"] == "feedback:support-team"
    [written] = store.list_objects(service.layout.errors)
    assert json.loads(store.read_text(f"{service.layout.errors}/{written}"))["source"] == "feedback:support-team"
    assert http.get("/health").json()["feedback"]["accepted"] == 1

    opened = make_service(tokens=None, root=s3_env, open_feedback=True)
    http = client(opened)
    answer = http.post("/feedback", json=REPORT)
    assert answer.status_code == 201 and answer.json()["recorded"]["source"] == "feedback:anonymous"
    assert http.post("/feedback", json=REPORT, headers={"Authorization": "Bearer guessed"}).status_code == 401
    health = http.get("/health").json()["feedback"]
    assert health["auth"] == "open" and health["accepted"] == 1 and health["refused"]["unauthorized"] == 1


def test_request_bodies_are_bounded_before_they_are_parsed(make_service):
    service = make_service(max_request_bytes=4096)
    http = client(service)
    declared = http.post("/predict", content=b"{" + b"x" * 5000, headers=JSON)         # not even JSON: never parsed
    assert declared.status_code == 413 and "5001 bytes, more than the 4096" in declared.json()["detail"]
    streamed = http.post("/feedback", content=iter([b'{"input": "'] + [b"y" * 1000] * 5 + [b'"}']),
                         headers={**JSON, **SUPPORT})                                   # chunked: no Content-Length
    assert streamed.status_code == 413 and "more than the 4096 bytes" in streamed.json()["detail"]
    assert http.get("/health").json()["feedback"]["refused"]["too_large"] == 1
    assert http.post("/predict", json={"inputs": ["x" * 1000] * 3}).status_code == 200


def test_a_real_server_refuses_a_large_body_from_its_content_length(make_service):
    service = make_service(max_request_bytes=4096)
    server, url = in_thread(service)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            answer = http.post("/predict", content=b"z" * 1_000_000, headers=JSON)
            assert answer.status_code == 413 and "1000000 bytes" in answer.json()["detail"]
            assert http.post("/predict", json={"input": "still serving"}).status_code == 200
    finally:
        server.should_exit = True


def test_inputs_are_bounded_in_characters_and_count(make_service):
    service = make_service(max_input_chars=100, max_batch=4)
    http = client(service)
    answer = http.post("/predict", json={"inputs": ["fine", "w" * 101]})
    assert answer.status_code == 413 and answer.json()["detail"] == "inputs[1] is 101 characters, more than 100"
    assert http.post("/predict", json={"input": "w" * 101}).json()["detail"].startswith("input is 101 characters")
    assert http.post("/predict", json={"inputs": ["a"] * 5}).status_code == 422
    assert http.post("/predict", json={"inputs": ["w" * 100] * 4}).status_code == 200


def test_a_lone_surrogate_is_refused_not_a_server_error(make_service):
    service = make_service()
    http = client(service)
    answer = http.post("/predict", content=b'{"inputs": ["fine", "bad \\ud800 text"]}', headers=JSON)
    assert answer.status_code == 422
    assert answer.json()["detail"] == "inputs[1] contains a lone surrogate (not valid Unicode)"
    answer = http.post("/feedback", content=b'{"input": "x", "output": "L0", "correct": "L1", "rephrases": '
                                             b'["ok", "\\udfff"]}', headers={**JSON, **SUPPORT})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("rephrases[1] contains a lone surrogate")
    # a malformed request is refused without its input echoed (FastAPI's own answer cannot encode this one)
    answer = http.post("/predict", content=b'{"inputs": "\\ud800"}', headers=JSON)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "inputs"]
    assert "input" not in answer.json()["detail"][0]
    assert http.post("/predict", content=b'{"inputs": ["\\ud83d\\ude00 a pair is fine"]}',
                     headers=JSON).status_code == 200


def record_runs(model) -> list[tuple[int, int]]:
    """Wraps the model's real session; -> the (rows, tokens) of each input_ids it is given, as they come."""
    real, runs = model.session, []

    class Recording:
        def get_inputs(self):
            return real.get_inputs()

        def run(self, names, feed):
            runs.append(feed["input_ids"].shape)
            return real.run(names, feed)

    model.session = Recording()
    return runs


def test_long_inputs_are_truncated_to_the_models_positions(make_service):
    long = " ".join(["word"] * 600)                # 600 tokens; the tiny models have 128 positions
    classifier = make_service()
    assert classifier.current.max_length == 128
    runs = record_runs(classifier.current)
    answer = client(classifier).post("/predict", json={"inputs": [long, "short"] + [long] * 30})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 32
    assert runs == [(16, 128), (16, 128)]          # truncated, and at most TOKENS_PER_RUN (2048) tokens a run

    lm = make_service(arch="llama")
    runs = record_runs(lm.current)
    answer = client(lm).post("/predict", json={"input": long, "max_new_tokens": 4})
    assert answer.status_code == 200 and runs[0] == (1, 128 - 4) and max(t for _, t in runs) <= 128


def test_serve_options_reach_the_settings(monkeypatch):
    import patcher.serving.serve as serve_module
    from patcher.cli import main

    got = {}
    monkeypatch.setattr(serve_module, "serve", lambda settings, host, port: got.update(settings=settings))
    assert main(["serve", "--model", "m", "--root", "s3://r", "--open-feedback", "--feedback-per-minute", "5",
                 "--max-input-chars", "100"]) == 0
    s = got["settings"]
    assert s.open_feedback and s.feedback_per_minute == 5 and s.max_input_chars == 100
    assert s.max_request_bytes == ServeSettings("m").max_request_bytes        # not given: the default
