"""The gate's decisions on train reports, its Markdown for the reviewer, the settings it reads, the plot."""
import pytest

from patcher.pipeline.gate import GateThresholds, gate
from patcher.pipeline.plot import metrics_svg
from patcher.pipeline.settings import PipelineSettings


def report(suites=None, **metrics):
    base = {"SR": 1.0, "GR": 0.5, "ER": 1.0, "TrainR": 1.0, "TestR": 1.0, "n_edits": 4, "n_failed": 0,
            "n_skipped_already_correct": 1, "n_neurons": 4, "edit_seconds_median": 0.1}
    edits = [{"error_id": f"e{i}", "input": f"q {i} | pipe", "target": "a", "status": "edited", "before": "b",
              "after": "a", "final": "a"} for i in range(4)] + \
            [{"error_id": "s", "input": "q", "target": "a", "status": "skipped", "before": "a", "after": "a"}]
    locality = {"train": {"targets": True, "retain": 1.0, "unchanged": 1.0, "changed": []},
                "test": {"targets": True, "retain": 1.0, "unchanged": 0.995,
                         "changed": [{"input": "x", "target": "y", "before": "y", "after": "z"}]},
                "regression": {"targets": False, "retain": None, "unchanged": 1.0, "changed": []}}
    for name, values in (suites or {}).items():
        locality[name] = {**locality[name], **values}
    return {"model": "m", "metrics": {**base, **metrics}, "registry_ER": 1.0, "registry_wrong": [], "failed_ids": [],
            "edits": edits, "locality": locality}


def test_passes_and_reports():
    result = gate(report(), GateThresholds())
    assert result.passed and result.review == []
    md = result.markdown()
    assert "PASSED" in md and "q 0 \\| pipe" in md and "| test | x | y | y | z |" in md
    assert "| s |" not in md                        # already-right records are not edits


@pytest.mark.parametrize("suites, change, failing", [
    ({"test": {"retain": 0.98}}, {}, "test: retain"), ({"train": {"retain": 0.5}}, {}, "train: retain"),
    ({"regression": {"unchanged": 0.98}}, {}, "regression: unchanged"),
    ({"test": {"unchanged": 0.9}}, {}, "test: unchanged"), ({}, {"n_failed": 3}, "failed edits (share)")])
def test_each_threshold_fails_the_gate(suites, change, failing):
    result = gate(report(suites, **change), GateThresholds())
    assert not result.passed
    assert [c["name"] for c in result.checks if not c["passed"]] == [failing]
    assert "FAILED" in result.markdown()


def test_a_suite_without_targets_has_no_retain_check_and_no_suite_fails():
    names = [c["name"] for c in gate(report(), GateThresholds()).checks]
    assert "regression: unchanged" in names and "regression: retain" not in names and "test: retain" in names
    bare = report()
    bare["locality"] = {}
    result = gate(bare, GateThresholds())
    assert not result.passed and [c["name"] for c in result.checks if not c["passed"]] == ["locality suites"]


def test_a_broken_edit_fails_and_goes_to_review():
    r = report()
    r["registry_ER"], r["registry_wrong"], r["failed_ids"] = 0.75, ["e2"], ["e9"]
    result = gate(r, GateThresholds())
    failing = {c["name"] for c in result.checks if not c["passed"]}
    assert failing == {"ER (every edit of the patch set)", "each new patch's own edit holds"}
    assert {x["error_id"] for x in result.review} == {"e2", "e9"}


def test_settings_load_overrides_and_refuse_unknown(tmp_path):
    (tmp_path / "params.yaml").write_text("gate:\n  retain: 0.9\napprove:\n  policy: manual\nfacts:\n  seed: 1\n")
    s = PipelineSettings.load(tmp_path / "params.yaml", {"approve": {"policy": "auto"}})
    assert s.gate.retain == 0.9 and s.gate.unchanged == 0.99 and s.approve.policy == "auto"
    assert PipelineSettings.load(tmp_path / "missing.yaml").ingest.root == "s3://patcher"
    with pytest.raises(ValueError, match="retian"):
        PipelineSettings.load(None, {"gate": {"retian": 1}})
    with pytest.raises(ValueError, match="policy"):
        PipelineSettings.load(None, {"approve": {"policy": "yolo"}})


def test_plot_is_svg_with_a_line_per_metric():
    points = [{"records": n, "SR": 1.0, "ER": 1 - n / 100, "TestR": None} for n in (5, 10, 20)]
    svg = metrics_svg(points, "t <&>")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "t &lt;&amp;&gt;" in svg


def test_pipeline_run_overrides_parse_as_params_sections():
    from patcher.cli import _section_overrides

    assert _section_overrides(["gate.test_retain=0.995", "approve.policy=auto", "register.repo=null"]) == \
        {"gate": {"test_retain": 0.995}, "approve": {"policy": "auto"}, "register": {"repo": None}}
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        _section_overrides(["test_retain=0.9"])


@pytest.mark.parametrize("model", ["factcheck-minilm", "facts-smollm2"])
def test_the_reference_settings_pin_every_setting_a_models_pipeline_changes(model):
    # bench/sequential.py's `reference` editor applies them over the model's settings (params.yaml, its catalog entry)
    from patcher import EditorConfig
    from patcher.engine.config import REFERENCE_SETTINGS
    from patcher.pipeline.catalog import Catalog

    pipeline = PipelineSettings.load().train.editor_overrides(Catalog().entry(model))
    assert EditorConfig(**{**pipeline, **REFERENCE_SETTINGS}) == EditorConfig.reference()


def test_outcomes_are_typed_and_read_as_before():
    from patcher.pipeline.approval import ApprovalRecord
    from patcher.pipeline.outcome import Outcome, Status

    texts = {Outcome.skipped(): "skipped: another run holds the lock", Outcome.nothing_new(): "nothing new",
             Outcome.nothing_to_edit(): "nothing to edit: every record quarantined",
             Outcome.approved_as(3): "approved: v0003",
             Outcome.rejected_by(ApprovalRecord.gate_failed().to_dict()): "rejected: gate failed",
             Outcome.rejected_by(ApprovalRecord.timed_out(5).to_dict()): "rejected: approval timed out",
             Outcome.rejected_by(ApprovalRecord.by_person(False, "bob", "no").to_dict()): "rejected: by bob",
             Outcome.rejected_by(ApprovalRecord.by_person(False, "", "").to_dict()): "rejected: by a reviewer"}
    assert {str(o): t for o, t in texts.items()} == {t: t for t in texts.values()}
    assert Outcome.approved_as(3).approved and Outcome.approved_as(3).version == 3
    assert [o.status for o in texts if o.rejected] == [Status.REJECTED] * 4
    assert not any(o.rejected or o.approved for o in (Outcome.skipped(), Outcome.nothing_new()))


def test_a_rejections_reason_for_the_review_queue():
    from patcher.pipeline.approval import ApprovalRecord

    assert ApprovalRecord.gate_failed().why == "the gate failed: not sent for approval"
    assert ApprovalRecord.timed_out(2).why == "no decision within 2 s: rejected"
    assert ApprovalRecord.by_person(False, "bob", "checked").why == "rejected by bob: checked"
    record = ApprovalRecord.by_person(True, "alice", "ok")
    assert ApprovalRecord.from_dict({**record.to_dict(), "version": 3}) == record


def test_a_pending_approval_is_answered_only_as_itself(tmp_path):
    import json

    from patcher.pipeline.approval import PendingApproval

    pending = PendingApproval.of(b'{"model": "m"}', "m", True, "patches/", tmp_path / "gate.json")
    assert pending.id == PendingApproval.of(b'{"model": "m"}', "m", False, None, "x").id != \
        PendingApproval.of(b'{"model": "n"}', "m", True, None, "x").id          # the train report's content
    path = tmp_path / "pending.json"
    path.write_text(json.dumps(pending.to_dict()))
    loaded = PendingApproval.load(path)
    assert loaded == pending and list(pending.to_dict()) == ["id", "model", "passed", "patches", "gate_report",
                                                             "created_at"]
    with pytest.raises(ValueError, match=f"pending.json holds m {pending.id}, not m wrong-id"):
        loaded.decide("wrong-id", "m", True, "alice", where=path)
    with pytest.raises(ValueError, match="reviewer's name"):
        loaded.decide(pending.id, "m", True, "  ")
    decision = loaded.decide(pending.id, "m", True, "alice", "fine")
    assert list(decision) == ["approved", "reviewer", "comment", "at", "by_policy", "pending"]
    assert (decision["approved"], decision["reviewer"], decision["pending"]) == (True, "alice", pending.id)
    failed = PendingApproval.of(b"{}", "m", False, None, "g.json")
    with pytest.raises(ValueError, match="failed its gate"):
        failed.decide(failed.id, "m", True, "alice")
    (tmp_path / "other.json").write_text('{"id": "x"}')
    with pytest.raises(ValueError, match="not a pending approval"):
        PendingApproval.load(tmp_path / "other.json")
