"""The Prefect pipeline end to end on real components: a SeaweedFS S3 server, a Prefect test server, the real
factcheck-minilm model and its real mistakes (data/errors/), great-expectations validation.

Every record of a damaged batch ends up accepted or quarantined with a reason; a rerun processes nothing
twice; an S3 outage is retried; a gate failure rejects; an approval given from another process lets the
run go on, a rejection or a timeout stops it; a run that finds the lock held touches nothing."""
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from patcher.engine.patchset import PatchSet
from patcher.engine.records import read_records
from patcher.facts.stream import batches
from patcher.pipeline import store
from patcher.pipeline.outcome import Outcome, Status
from patcher.pipeline.store import Layout, Lock, put_files

pytestmark = pytest.mark.real
MODEL = "factcheck-minilm"
HOUR = datetime(2026, 11, 24, 10, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def factcheck(factcheck_model):
    return factcheck_model


@pytest.fixture(scope="module")
def mistakes():
    return read_records(f"data/errors/{MODEL}.jsonl")


def seed(root, records, start=HOUR, hours=1, damaged_share=0.0, seed=0):
    files, damaged = batches(records, start, hours=hours, damaged_share=damaged_share, seed=seed)
    put_files(f"{root}/errors/{MODEL}", {k: "".join(line + "\n" for line in v) for k, v in files.items()})
    return files, damaged


def run(root, registry=None, overrides=None, **kwargs):
    """One pipeline run; versions go to S3 only unless a registry repository is given (never this checkout).
    -> its RunResult (outcome, summary)."""
    from flows.pipeline import pipeline

    overrides = {**(overrides or {}), "register": {"repo": str(registry) if registry else None}}
    return pipeline(model=MODEL, root=root, overrides=overrides, **{"approval": "auto", **kwargs})


def jsonl(uri):
    return [json.loads(x) for x in store.read_text(uri).splitlines() if x.strip()]


def test_damaged_batches_rerun_and_a_later_batch(s3_env, prefect_api, factcheck, mistakes, tmp_path):
    from prefect import get_client

    from patcher.pipeline.registry import Registry

    root, layout = s3_env, Layout(s3_env, MODEL)
    registry = Registry.init(tmp_path / "registry", f"{root}/dvc")
    files, damaged = seed(root, mistakes[:24], hours=2, damaged_share=0.25, seed=3)
    lines = sum(map(len, files.values()))
    assert len(files) == 2 and damaged

    result = run(root, registry.repo)
    first = result.summary
    assert result.outcome == Outcome(Status.APPROVED, "v0001", 1) and first["outcome"] == "approved: v0001", first
    assert first["counts"] == {"received": lines, "accepted": lines - len(damaged), "quarantined": len(damaged)}
    quarantined = {(key, row["line"] - 1): row for key in files for row in
                   (jsonl(f"{layout.quarantine}/{key}") if f"{key}" in store.list_objects(layout.quarantine) else [])}
    assert set(quarantined) == set(damaged)                             # exactly the damaged lines, each with
    assert all(row["reasons"] and row["record"] == files[k][i] for (k, i), row in quarantined.items())  # why
    accepted = jsonl(f"{layout.run(first['run_id'])}/accepted.jsonl")
    assert len(accepted) == first["counts"]["accepted"]

    manifest = json.loads(store.read_text(f"{layout.version(1)}/manifest.json"))
    edited = {e["error_id"] for e in manifest["edits"]}
    assert edited and edited <= {r["id"] for r in accepted}
    approval = json.loads(store.read_text(f"{layout.version(1)}/approval.json"))
    assert approval["by_policy"] and approval["reviewer"] == "policy:auto" and approval["version"] == 1
    gate_report = json.loads(store.read_text(f"{layout.version(1)}/gate_report.json"))
    assert gate_report["passed"] and gate_report["metrics"]["SR"] == first["metrics"]["SR"]
    state, etag = store.load_state(layout)
    assert state.version == 1 and state.patches == layout.version(1) and set(state.batches) == set(files)
    assert set(state.records) == {r["id"] for r in accepted}

    v1 = registry.resolve(MODEL)                                        # the registry has it, tagged
    assert (v1["tag"], v1["approved_by"]) == (f"{MODEL}@v1.0.0", "policy:auto")
    assert set(PatchSet.load(registry.fetch(MODEL, tmp_path / "v1")).error_ids) == edited
    assert registry.read(MODEL, "manifest.json")["edits"] == manifest["edits"]

    with get_client(sync_client=True) as client:                       # what the run left in Prefect
        artifacts = {a.key: a for a in client.read_artifacts() if a.key}
    assert {"pipeline-summary", "edit-metrics", "edit-metrics-plot", "gate-report", "data-docs"} <= set(artifacts)
    assert first["run_id"] in artifacts["pipeline-summary"].data and "approved: v0001" in \
        artifacts["pipeline-summary"].data
    assert store.read_text(f"{layout.run(first['run_id'])}/metrics.svg").startswith("<svg")

    again = run(root, registry.repo)                                    # nothing new: nothing twice
    assert again.outcome.status is Status.NOTHING_NEW and again.summary["outcome"] == "nothing new"
    assert store.load_state(layout)[1] == etag

    later = mistakes[24:28]
    repeat = accepted[0]                                                # an id already processed
    extra = {**repeat, "logged_at": "2026-11-24T12:30:00Z"}
    files2, _ = seed(root, later, start=datetime(2026, 11, 24, 12, tzinfo=timezone.utc))
    key = next(iter(files2))
    store.write_text(f"{layout.errors}/{key}", "".join(x + "\n" for x in files2[key]) + json.dumps(extra) + "\n")
    third = run(root, registry.repo).summary
    assert third["outcome"] == "approved: v0002", third
    assert third["counts"] == {"received": 5, "accepted": 4, "quarantined": 1}
    assert jsonl(f"{layout.quarantine}/{key}")[0]["reasons"] == [f"id already processed (run {first['run_id']})"]
    manifest2 = json.loads(store.read_text(f"{layout.version(2)}/manifest.json"))
    assert edited <= {e["error_id"] for e in manifest2["edits"]}        # v2 = v1's edits + the new ones
    report = json.loads(store.read_text(f"{layout.run(third['run_id'])}/train_report.json"))
    assert report["base_edits"] == len(manifest["edits"]) and report["registry_ER"] >= 0.99
    assert store.load_state(layout)[0].version == 2
    assert [v["number"] for v in registry.versions(MODEL)] == [1, 2]
    assert report["base_uri"] == f"{layout.run(third['run_id'])}/base"      # trained on the registry's v1

    # a run that registered v2 but died before its ledger write: the next run sees every batch again, and the
    # ids v2 holds are not edited twice
    store.write_json(layout.state, {})
    fourth = run(root, registry.repo).summary
    assert fourth["adopted"] == {"version": 2, "tag": f"{MODEL}@v2.0.0"}, fourth     # the ledger names v2 again
    assert store.load_state(layout)[0].runs[0]["outcome"].startswith(f"adopted {MODEL}@v2.0.0 from the registry")
    held = {e["error_id"] for e in manifest2["edits"]}
    reasons = {json.loads(r["record"])["id"]: r["reasons"] for k in [*files, key]
               for r in jsonl(f"{layout.quarantine}/{k}") if r["reasons"][0].startswith("id already processed")}
    assert held <= set(reasons) and all(reasons[i] == [f"id already processed (run {third['run_id']})"]
                                        for i in held)
    latest = PatchSet.load(registry.fetch(MODEL, tmp_path / "latest"))
    assert len(latest.edits) == len({e["error_id"] for e in latest.edits}) >= len(held), fourth["outcome"]


def test_an_s3_only_version_is_saved_and_is_what_the_next_run_builds_on(s3_env):
    """No registry: the ledger's version (patches/M/vNNNN/) is the base, and its edits count as processed."""
    layout, run_id = Layout(s3_env, MODEL), "20261124T100000Z-test"
    run_prefix = layout.run(run_id)
    manifest = {"edits": [{"error_id": "e1"}, {"error_id": "e2"}]}
    store.write_json(f"{run_prefix}/patches/manifest.json", manifest)
    store.write_text(f"{run_prefix}/gate_report.json", '{"passed": true}\n')
    assert store.ledger_base(store.State()) == (None, {})
    target = store.save_version(layout, run_id, 3, {"approved": True, "reviewer": "alice"}, None)
    assert target == layout.version(3) and set(store.list_objects(target)) == \
        {"manifest.json", "gate_report.json", "approval.json"}
    assert json.loads(store.read_text(f"{target}/approval.json")) == \
        {"approved": True, "reviewer": "alice", "run_id": run_id, "version": 3, "tag": None}
    assert store.ledger_base(store.State(version=3, patches=target)) == (target, {"e1": "v0003", "e2": "v0003"})


def test_s3_outage_during_ingest_is_retried(s3_env, s3_server, prefect_api, monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    root, layout = s3_env, Layout(s3_env, MODEL)
    store.write_text(f"{layout.errors}/2026/11/24/10/batch-0000.jsonl", "{not json\n[1, 2]\n")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")          # no retries inside boto3: Prefect's task retries
    s3_server.stop()
    restart = threading.Timer(3.0, s3_server.start)
    restart.start()
    from flows.pipeline import pipeline

    state = pipeline(model=MODEL, root=root, approval="auto", return_state=True)
    restart.join()
    result = state.result()
    assert result.outcome == Outcome.nothing_to_edit() and not result.outcome.rejected
    assert result.summary["outcome"] == "nothing to edit: every record quarantined"
    assert [len(r["reasons"]) for r in jsonl(f"{layout.quarantine}/2026/11/24/10/batch-0000.jsonl")] == [1, 1]
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=None, id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_runs[0].id])))
    assert any(t.run_count > 1 for t in tasks), [(t.name, t.run_count) for t in tasks]


def test_gate_failure_rejects_and_sends_errors_to_review(s3_env, prefect_api, factcheck, mistakes):
    root, layout = s3_env, Layout(s3_env, MODEL)
    seed(root, mistakes[30:36])
    result = run(root, overrides={"gate": {"retain": 1.5}})        # a threshold nothing can pass
    summary = result.summary
    assert result.outcome.rejected and str(result.outcome) == summary["outcome"] == "rejected: gate failed"
    assert not summary["gate_passed"]
    review = jsonl(layout.review(summary["run_id"]))
    assert {r["id"] for r in review} == {r.id for r in mistakes[30:36]} and all(r["reason"] for r in review)
    state, _ = store.load_state(layout)
    assert state.version == 0 and state.patches is None and len(state.records) == 6     # handled, not live
    assert store.list_objects(layout.uri("patches", MODEL)) == {}
    assert run(root).outcome == Outcome.nothing_new()
    status = subprocess.run([sys.executable, "-m", "patcher.cli", "pipeline", "status", "--model", MODEL,
                             "--root", root], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr[-2000:]
    shown = json.loads(status.stdout)
    assert (shown["version"], shown["records"], [r["outcome"] for r in shown["runs"]]) == \
        (0, 6, ["rejected: gate failed"])


def _decide_from_another_process(prefect_api, approve: bool | None, reviewer="alice", deadline=240):
    """Waits for the paused approval run, then answers it with `patcher pipeline resume` in a subprocess
    (approve None: never answers)."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        out = subprocess.run([sys.executable, "-m", "patcher.cli", "pipeline", "pending"], capture_output=True,
                             text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        pending = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
        if pending:
            if approve is None:
                return pending
            flag = "--approve" if approve else "--reject"
            done = subprocess.run([sys.executable, "-m", "patcher.cli", "pipeline", "resume", pending[0]["flow_run"],
                                   flag, "--reviewer", reviewer, "--comment", "checked the report"],
                                  capture_output=True, text=True, env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            return pending
        time.sleep(1)
    raise AssertionError("no approval run paused")


def _run_in_thread(root, **kwargs):
    result = {}
    thread = threading.Thread(target=lambda: result.update(run=run(root, **kwargs)))
    thread.start()
    return thread, result


@pytest.mark.parametrize("approve", [True, False])
def test_manual_decision_from_another_process(s3_env, prefect_api, factcheck, mistakes, approve):
    root, layout = s3_env, Layout(s3_env, MODEL)
    seed(root, mistakes[40:45])
    thread, result = _run_in_thread(root, approval="manual", overrides={"approve": {"poll_s": 1, "timeout_s": 300}})
    _decide_from_another_process(prefect_api, approve, reviewer="alice" if approve else "bob")
    thread.join(timeout=300)
    outcome, summary = result["run"].outcome, result["run"].summary
    state, _ = store.load_state(layout)
    if approve:
        assert outcome == Outcome.approved_as(1) and summary["outcome"] == "approved: v0001", summary
        record = json.loads(store.read_text(f"{layout.version(1)}/approval.json"))
        assert (record["reviewer"], record["comment"], record["by_policy"]) == ("alice", "checked the report", False)
        assert state.version == 1
    else:
        assert outcome == Outcome(Status.REJECTED, "by bob") and summary["outcome"] == "rejected: by bob", summary
        assert {r["reason"] for r in jsonl(layout.review(summary["run_id"]))} >= \
            {"rejected by bob: checked the report"}
        assert state.version == 0 and len(state.records) == 5


def test_no_decision_in_time_is_a_rejection(s3_env, prefect_api, factcheck, mistakes):
    root, layout = s3_env, Layout(s3_env, MODEL)
    seed(root, mistakes[50:53])
    result = run(root, approval="manual", overrides={"approve": {"poll_s": 1, "timeout_s": 2}})
    summary = result.summary
    assert result.outcome == Outcome(Status.REJECTED, "approval timed out"), summary
    assert summary["outcome"] == "rejected: approval timed out"
    approval = json.loads(store.read_text(f"{layout.run(summary['run_id'])}/approval.json"))
    assert approval["reviewer"] == "timeout" and not approval["approved"]
    assert store.load_state(layout)[0].version == 0


def test_a_held_lock_keeps_a_second_run_out(s3_env, prefect_api):
    root, layout = s3_env, Layout(s3_env, MODEL)
    store.write_text(f"{layout.errors}/2026/11/24/10/batch-0000.jsonl", "{not json\n")
    with Lock(layout, "the-first-run"):
        result = run(root)
        assert result.outcome.status is Status.SKIPPED and "the-first-run" in result.summary["reason"]
        assert result.summary["outcome"] == "skipped: another run holds the lock"
        assert store.load_state(layout) == (store.State(), None)
    assert str(run(root).outcome) == "nothing to edit: every record quarantined"


def test_a_batch_larger_than_a_flow_parameter_goes_through(s3_env, prefect_api):
    """Prefect refuses flow-run parameters over 512 KB: batch contents must not travel as parameters."""
    root, layout = s3_env, Layout(s3_env, MODEL)
    line = json.dumps({"id": "x", "note": "y" * 1000})                     # unknown field: quarantined
    store.write_text(f"{layout.errors}/2026/11/24/10/batch-0000.jsonl",
                     "".join(line.replace('"x"', f'"big-{i}"') + "\n" for i in range(700)))
    result = run(root)
    assert str(result.outcome) == "nothing to edit: every record quarantined", result.summary
    assert result.summary["counts"] == {"received": 700, "accepted": 0, "quarantined": 700}


def test_nothing_new_says_where_stray_batches_sit(s3_env, prefect_api):
    store.write_text(f"{s3_env}/errors/2026/11/24/10/batch-0000.jsonl", "{}\n")     # in no model's folder
    result = run(s3_env)
    assert result.outcome.status is Status.NOTHING_NEW
    assert result.summary["stray_errors"] == [f"{s3_env}/errors/2026"]


def test_a_killed_runs_lock_is_broken_and_its_flow_run_marked_crashed(s3_env, prefect_api):
    """A run SIGKILLed mid-way left its lock (its lease far from over) and its flow run "Running": the next run
    breaks the lock at once (its process is gone), marks that flow run Crashed and names itself MODEL-RUN_ID."""
    import socket

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Running

    from flows.pipeline import pipeline

    root, layout = s3_env, Layout(s3_env, MODEL)
    with get_client(sync_client=True) as client:
        killed = client.create_flow_run(pipeline, name="killed", parameters={"model": MODEL})
        client.set_flow_run_state(killed.id, Running(), force=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.write_json(layout.lock, {"run_id": "killed-run", "flow_run_id": str(killed.id), "host": socket.gethostname(),
                                   "pid": int(gone.stdout), "acquired_at": "2026-12-01T00:00:00Z",
                                   "renewed_at": "2026-12-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z"})
    state = pipeline(model=MODEL, root=root, approval="auto", return_state=True)
    result = state.result()
    assert result.outcome.status is Status.NOTHING_NEW and result.summary["crashed_runs"] == [str(killed.id)]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(killed.id).state.type.value == "CRASHED"
        name = f"{MODEL}-{result.summary['run_id']}"
        assert client.read_flow_run(state.state_details.flow_run_id).name == name
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
            any_=[state.state_details.flow_run_id])))
        assert [c.name for c in children] == [f"{name}-ingest"]                   # each step named after its run
    assert "lock.json" not in store.list_objects(layout.uri("pipeline", MODEL))


def test_train_runs_as_the_gpu_deployment_when_a_worker_serves_the_pool(s3_env, prefect_api, factcheck, mistakes):
    """prefect.yaml's train deployment, a real process worker on the `gpu` pool: the pipeline's train step
    goes there (on this CPU-only machine the worker trains on CPU) and the result comes back through S3."""
    from flows.pipeline import gpu_worker_online

    root = s3_env
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    prefect = [sys.executable, "-m", "prefect"]
    for cmd in (["work-pool", "create", "gpu", "--type", "process"], ["--no-prompt", "deploy", "--name", "train-gpu"]):
        out = subprocess.run(prefect + cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    worker = subprocess.Popen(prefect + ["worker", "start", "--pool", "gpu"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not gpu_worker_online() and time.monotonic() < deadline:
            time.sleep(1)
        seed(root, mistakes[60:64])
        result = run(root)
        assert result.summary["train_ran"] == "deployment train/train-gpu"
        assert result.outcome == Outcome.approved_as(1), result.summary
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:      # still winding down a flow run's subprocess: not what is tested here
            worker.kill()
            worker.wait()
        subprocess.run(prefect + ["work-pool", "delete", "gpu"], capture_output=True, text=True, env=env)
    assert not gpu_worker_online()


def test_serving_closes_the_loop(s3_env, prefect_api, factcheck, mistakes, tmp_path, monkeypatch):
    """`patcher serve` answers from the published unpatched model; users report its mistakes via /feedback;
    the pipeline ingests them, patches, exports and publishes v0001; the service switches to it under a steady
    load of requests, none failing, and now answers those inputs right."""
    import httpx

    from patcher.serving.export import export
    from patcher.serving.publish import latest, publish
    from patcher.serving.serve import ServeSettings, Service, in_thread

    root = s3_env
    export(factcheck, None, tmp_path / "v0000")
    publish(tmp_path / "v0000", root, MODEL, "v0000")
    monkeypatch.setenv("PATCHER_FEEDBACK_TOKENS", "support:t0ken-for-the-tests")
    service = Service(ServeSettings(MODEL, root, cache_dir=str(tmp_path / "cache"), poll_s=0.2)).start()
    server, url = in_thread(service)
    reported = mistakes[:4]
    texts = [r.input for r in reported]
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": "Bearer t0ken-for-the-tests"}) as http:
            assert http.get("/health").json()["version"] == "v0000"
            before = http.post("/predict", json={"inputs": texts}).json()
            assert [p["label"] for p in before["predictions"]] == [r.prediction for r in reported]   # its mistakes
            assert all(abs(sum(p["scores"].values()) - 1) < 1e-4 for p in before["predictions"])
            for r, p in zip(reported, before["predictions"]):
                answer = http.post("/feedback", json={"input": r.input, "output": p["label"], "correct": r.target,
                                                      "rephrases": r.rephrases})
                assert answer.status_code == 201 and answer.json()["recorded"]["target"] == r.target
                assert answer.json()["recorded"]["source"] == "feedback:support"
            bad = http.post("/feedback", json={"input": "Paris is in Peru.", "output": "SUPPORTED", "correct": "MAYBE"})
            assert bad.status_code == 422 and "correct must be one of" in bad.json()["detail"]
            assert http.post("/predict", json={"inputs": []}).status_code == 422

        seen, stop = [], threading.Event()

        def load():
            mine = []
            seen.append(mine)
            with httpx.Client(base_url=url, timeout=60) as http:
                while not stop.is_set():
                    r = http.post("/predict", json={"inputs": texts})
                    mine.append((r.status_code, r.json()["version"] if r.status_code == 200 else r.text))
                    time.sleep(0.02)                          # steady, not a CPU hog beside the training

        clients = [threading.Thread(target=load) for _ in range(3)]
        for c in clients:
            c.start()
        result = run(root)
        summary = result.summary
        assert result.outcome.approved and summary["outcome"] == "approved: v0001", summary
        assert summary["counts"] == {"received": 4, "accepted": 4, "quarantined": 0}   # the 422 one was never logged
        assert summary["export"]["how"] == "branch in the graph" and summary["export"]["parity"]["max_abs_diff"] <= 1e-4
        assert latest(root, MODEL)["version"] == "v0001"
        deadline = time.monotonic() + 60
        while service.health()["version"] != "v0001":
            assert time.monotonic() < deadline, service.health()
            time.sleep(0.1)
        served = service.requests
        while service.requests < served + 6:                 # requests answered by the new version too
            time.sleep(0.05)
        stop.set()
        for c in clients:
            c.join()
        answers = [a for mine in seen for a in mine]
        assert answers and all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
        for mine in seen:                                     # each client: v0000, then v0001, never back
            versions = [v for _, v in mine]
            assert versions == sorted(versions) and versions[-1] == "v0001"
        assert {v for _, v in answers} == {"v0000", "v0001"}

        manifest = json.loads(store.read_text(f"{Layout(root, MODEL).version(1)}/manifest.json"))
        fixed = {e["input"] for e in manifest["edits"]}
        assert fixed and all(e["error_id"].startswith("feedback-") for e in manifest["edits"])
        with httpx.Client(base_url=url, timeout=60) as http:
            after = http.post("/predict", json={"inputs": texts}).json()
        assert after["version"] == "v0001"
        assert all(p["label"] == r.target for r, p in zip(reported, after["predictions"]) if r.input in fixed)
    finally:
        server.should_exit = True
        service.stop()
