"""Bring your own model, tried as a new user would: a question-category classifier the user trained themselves
(examples/question-classifier/train.py plays their training job and their logs) is added to a catalog with data
files only and taken through the whole loop on a real SeaweedFS and a real Prefect server: errors in S3 ->
ingest -> validate -> train -> gate -> approve -> register -> export -> publish -> serve -> /feedback -> next run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from patcher.cli import main
from patcher.engine.records import read_records
from patcher.pipeline import store
from patcher.pipeline.outcome import Status
from patcher.pipeline.store import Layout

pytestmark = pytest.mark.real
MODEL = "question-classifier"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def users_model(tmp_path_factory):
    """The user's side: their classifier (a small seeded build), their production inputs, their regression
    suite (no targets) and their model's real misclassifications."""
    out = tmp_path_factory.mktemp("user") / "question-classifier"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "question-classifier" / "train.py"), "--out", str(out),
                           "--limit", "16", "--logged-at", "2026-12-07T10:00:00Z"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_users_classifier_through_the_whole_loop(users_model, s3_env, prefect_api, tmp_path, monkeypatch, capsys):
    import httpx

    from flows.pipeline import pipeline
    from patcher.serving.serve import ServeSettings, Service, in_thread

    user, root = users_model, s3_env
    catalog = tmp_path / "catalog.yaml"
    monkeypatch.setenv("PATCHER_CATALOG", str(catalog))
    assert main(["models", "add", MODEL, "--path", str(user / "model"), "--task", "classification",
                 "--memory", str(user / "memory.jsonl"), "--locality", f"regression={user / 'regression.jsonl'}"]) == 0
    added = capsys.readouterr().out
    labels = json.loads((user / "model" / "config.json").read_text())["id2label"]
    assert len(labels) > 2 and all(label in added for label in labels.values())
    errors = read_records(user / "errors.jsonl")
    assert len(errors) >= 5 and {r.model for r in errors} == {MODEL}

    # the user's serving system logs its mistakes, plus one line that is not a record
    (tmp_path / "logged.jsonl").write_text((user / "errors.jsonl").read_text() + '{"id": "broken"\n')
    assert main(["errors", "put", "--model", MODEL, "--in", str(tmp_path / "logged.jsonl"), "--root", root]) == 0
    first = pipeline(model=MODEL, root=root, approval="auto", overrides={"register": {"repo": None}})
    s = first.summary
    assert first.outcome.status is Status.APPROVED and s["outcome"] == "approved: v0001", s
    assert s["counts"] == {"received": len(errors) + 1, "accepted": len(errors), "quarantined": 1}
    m = s["metrics"]
    assert m["SR"] == 1.0 and m["n_failed"] == 0 and m["n_edits"] >= 5
    layout = Layout(root, MODEL)
    run = layout.run(s["run_id"])
    report = json.loads(store.read_text(f"{run}/train_report.json"))
    assert report["registry_ER"] >= 0.99 and report["locality"]["regression"]["targets"] is False
    assert report["locality"]["regression"]["unchanged"] >= 0.99
    assert report["data"]["memory"]["sha256"] and report["data"]["locality"]["regression"]["sha256"]
    gate = json.loads(store.read_text(f"{run}/gate_report.json"))
    assert gate["passed"] and "regression: unchanged" in {c["name"] for c in gate["checks"]}
    assert s["export"]["parity"]["examples"] > len(errors)       # the edits and the regression suite's inputs

    # serving: the published v0001 answers the edited inputs right; a user reports one more mistake
    monkeypatch.setenv("PATCHER_FEEDBACK_TOKENS", "helpdesk:t0ken-for-the-tests")
    service = Service(ServeSettings(MODEL, root, cache_dir=str(tmp_path / "cache"), poll_s=0.2)).start()
    server, url = in_thread(service)
    try:
        manifest = json.loads(store.read_text(f"{layout.version(1)}/manifest.json"))
        edited = {e["input"]: e["target"] for e in manifest["edits"]}
        with httpx.Client(base_url=url, timeout=60) as http:
            answers = http.post("/predict", json={"inputs": list(edited)}).json()
            assert answers["version"] == "v0001"
            assert [p["label"] for p in answers["predictions"]] == list(edited.values())
            text = "How much does it cost to send a parcel abroad?"
            said = http.post("/predict", json={"inputs": [text]}).json()["predictions"][0]["label"]
            wanted = next(label for label in labels.values() if label != said)
            reply = http.post("/feedback", json={"input": text, "output": said, "correct": wanted},
                              headers={"Authorization": "Bearer t0ken-for-the-tests"})
            assert reply.status_code == 201, reply.text
    finally:
        server.should_exit = True
        service.stop()
    second = pipeline(model=MODEL, root=root, approval="auto", overrides={"register": {"repo": None}})
    assert second.summary["counts"] == {"received": 1, "accepted": 1, "quarantined": 0}, second.summary
    assert second.outcome.status is Status.APPROVED and second.summary["outcome"] == "approved: v0002"
    v2 = json.loads(store.read_text(f"{layout.version(2)}/manifest.json"))
    ids = [e["error_id"] for e in v2["edits"]]
    assert ids[:len(manifest["edits"])] == [e["error_id"] for e in manifest["edits"]] and ids[-1].startswith("feedback-")
