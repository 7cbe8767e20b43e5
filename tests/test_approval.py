"""What the reviewer sees and can send: the approval form's schema (a required, non-blank reviewer, which the
Prefect server enforces), its description (the gate's summary with a link to the full report), the record a
submitted form becomes, and a metrics plot that does not hang on a link to S3."""
import json
import threading
import time
import uuid

import pytest
from prefect._internal.pydantic.v2_schema import create_v2_schema
from prefect.utilities.schema_tools import ValidationError, validate
from test_gate import flagged, report

import flows.gate
import flows.report
from flows import s3_tasks
from flows.approve import INTRO, Approval, approve, decision, form


def schema() -> dict:
    """The form's JSON schema as pause_flow_run stores it for the UI and for the server's checks."""
    model = form("the gate's summary")
    return create_v2_schema(model.__name__, model_base=model)


def test_the_form_requires_a_reviewer_and_says_what_approve_means():
    s = schema()
    assert s["required"] == ["reviewer"]                                   # the UI labels the others "(Optional)"
    assert (s["properties"]["reviewer"]["minLength"], s["properties"]["reviewer"]["pattern"]) == (1, r"\S")
    assert s["properties"]["approve"]["type"] == "boolean" and s["properties"]["approve"]["default"] is False
    assert "Off: reject" in s["properties"]["approve"]["description"]
    assert "reviewer" not in s["properties"]["comment"] and s["properties"]["comment"]["default"] == ""
    assert form("the gate's summary")._description == INTRO + "the gate's summary"


@pytest.mark.parametrize("answer", [{"approve": True, "reviewer": ""}, {"approve": True, "reviewer": "  \t"},
                                    {"approve": True}, {}])
def test_the_server_refuses_an_answer_without_a_reviewer(answer):
    # what Prefect's /flow_runs/{id}/resume runs on the stored schema before it lets the run go on
    with pytest.raises(ValidationError, match="reviewer"):
        validate(answer, schema(), raise_on_error=True)
    validate({"approve": True, "reviewer": "alice"}, schema(), raise_on_error=True)


def test_a_submitted_form_becomes_the_record_and_a_blank_name_never_approves():
    record = decision(Approval(approve=True, reviewer=" alice ", comment="checked"))
    assert (record["approved"], record["reviewer"], record["comment"], record["by_policy"]) == \
        (True, "alice", "checked", False)
    assert decision(Approval(approve=False, reviewer="bob"))["approved"] is False
    with pytest.raises(ValueError):
        Approval(approve=True, reviewer="   ")                        # the model refuses it when it loads
    past_the_form = decision(Approval.model_construct(approve=True, reviewer="   ", comment=""))
    assert (past_the_form["approved"], past_the_form["reviewer"]) == (False, "")
    assert approve.fn("summary", policy="auto")["reviewer"] == "policy:auto"


def test_the_gate_step_gives_the_form_a_summary_that_links_the_full_report(monkeypatch):
    written, artifact = {}, uuid.uuid4()
    monkeypatch.setattr(s3_tasks, "read_text", lambda uri: json.dumps(flagged(report(), "e2")))
    monkeypatch.setattr(s3_tasks, "write_json", lambda uri, data: written.update({uri: data}))
    monkeypatch.setattr(s3_tasks, "write_text", lambda uri, text, **kw: written.update({uri: text}))
    monkeypatch.setattr(flows.gate, "create_markdown_artifact", lambda markdown, **kw: artifact)
    monkeypatch.setattr(flows.gate, "artifact_url", lambda a: f"http://ui/artifacts/artifact/{a}")
    gated = flows.gate.gate_step.fn("s3://b/runs/m/r1/train_report.json", {"max_suspicious": 0})
    assert not gated["passed"] and gated["suspicious"][0]["error_id"] == "e2"
    assert gated["markdown"] == written["s3://b/runs/m/r1/gate_report.md"] and "| error | source |" in gated["markdown"]
    assert f"[the gate-report artifact](http://ui/artifacts/artifact/{artifact})" in gated["summary"]
    assert "`s3://b/runs/m/r1/gate_report.md`" in gated["summary"] and "| error |" not in gated["summary"]
    assert written["s3://b/runs/m/r1/gate_report.json"]["suspicious"] == gated["suspicious"]


def test_an_artifacts_link_needs_a_ui_url():
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4200/"}):
        assert flows.gate.artifact_url("abc") == "http://127.0.0.1:4200/artifacts/artifact/abc"
    with temporary_settings({PREFECT_UI_URL: None}):
        assert flows.gate.artifact_url("abc") is None


def test_the_published_plot_holds_its_image_and_numbers_not_a_link(monkeypatch):
    points = [{"records": n, "edits": n, "SR": 1.0, "GR": 0.5 + n / 100, "ER": 1.0, "neurons": n} for n in (2, 4)]
    artifacts, written = {}, {}
    monkeypatch.setattr(s3_tasks, "read_text", lambda uri: json.dumps({"checkpoints": points}))
    monkeypatch.setattr(s3_tasks, "write_text", lambda uri, text, **kw: written.update({uri: text}))
    for kind in ("markdown", "table", "image"):
        monkeypatch.setattr(flows.report, f"create_{kind}_artifact",
                            lambda data, key, kind=kind, **kw: artifacts.update({key: (kind, data)}), raising=False)
    monkeypatch.setattr("patcher.pipeline.store.presigned", lambda *a, **k: pytest.fail("a presigned URL"))
    summary = {"run_id": "r1", "model": "m", "outcome": "approved: v0001", "seconds": {"train": 1.0}}
    flows.report.publish(summary, "s3://b/runs/m/r1/train_report.json")
    kind, md = artifacts["edit-metrics-plot"]
    assert kind == "markdown" and "X-Amz-" not in md and "s3://" not in md and "http" not in md
    assert md.startswith("![m: metrics over this run's edits](data:image/svg+xml;base64,")
    assert "| records | edits | neurons | SR | GR | ER |" in md and "| 4 | 4 | 4 | 1.000 | 0.540 | 1.000 |" in md
    assert written["s3://b/runs/m/r1/metrics.svg"].startswith("<svg")        # a copy beside the run's files


@pytest.mark.integration
def test_a_paused_approval_refuses_a_blank_reviewer_and_takes_a_named_one(prefect_api):
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    from flows.review import pending_approvals

    result = {}
    thread = threading.Thread(target=lambda: result.update(record=approve("**Gate: m: PASSED**", timeout_s=120,
                                                                           poll_s=1)))
    thread.start()
    end = time.monotonic() + 90
    while not (pending := pending_approvals()) and time.monotonic() < end:
        time.sleep(0.5)
    assert pending, "no approval run paused"
    run_id = pending[0]["flow_run"]
    with get_client(sync_client=True) as client:                          # what the UI renders the form from
        inputs = {i.key: i.value for i in client.filter_flow_run_input(uuid.UUID(run_id), "paused-", 10, set())}
    assert any(json.loads(v)["required"] == ["reviewer"] for k, v in inputs.items() if k.endswith("-schema"))
    assert any(v.endswith("**Gate: m: PASSED**\"") for k, v in inputs.items() if k.endswith("-description"))
    for blank in ("", "   "):
        with pytest.raises(RuntimeError, match="reviewer"):
            resume_flow_run(run_id, run_input={"approve": True, "reviewer": blank})
    assert pending_approvals()                                              # still paused, still waiting
    resume_flow_run(run_id, run_input={"approve": True, "reviewer": "alice", "comment": "read it"})
    thread.join(timeout=60)
    assert (result["record"]["approved"], result["record"]["reviewer"], result["record"]["comment"]) == \
        (True, "alice", "read it")
