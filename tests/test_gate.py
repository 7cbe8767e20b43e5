"""The gate's decisions on train reports (suspicious corrections, locality changes old and new), its full
report and the approval form's summary, the settings it reads, the plot."""
import pytest

from patcher.pipeline.gate import GateThresholds, gate
from patcher.pipeline.plot import metrics_markdown, metrics_svg
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


def flagged(report_: dict, *ids: str, source: str = "feedback:support-team") -> dict:
    """The report with `source` on every edit and the given edits flagged as suspicious (patched all the same)."""
    for e in report_["edits"]:
        e["source"], e["suspicious"] = source, ([f"contradicts the memory: {e['input']!r} -> 'b'"]
                                                if e["error_id"] in ids else [])
    return report_


def held(report_: dict, error_id: str) -> dict:
    """The flagged edit as train.py leaves it: held for review, not trained."""
    reason = "; ".join(next(e for e in report_["edits"] if e["error_id"] == error_id)["suspicious"])
    report_["failed_ids"], report_["failed_reasons"] = [error_id], {error_id: f"held for review: {reason}"}
    report_["metrics"]["n_failed"] = 1
    for e in report_["edits"]:
        if e["error_id"] == error_id:
            e["status"], e["after"], e["final"] = "failed", "b", None
    return report_


SUSPICIOUS = "corrections flagged as suspicious, patched"


def test_a_patched_suspicious_correction_fails_the_gate_and_goes_to_review():
    result = gate(flagged(report(), "e1"), GateThresholds())
    assert not result.passed
    assert [(c["name"], c["value"], c["detail"]) for c in result.checks if not c["passed"]] == \
        [(SUSPICIOUS, 1, ["e1"])]
    assert result.suspicious == [{"error_id": "e1", "source": "feedback:support-team", "input": "q 1 | pipe",
                                  "target": "a", "status": "edited",
                                  "reasons": ["contradicts the memory: 'q 1 | pipe' -> 'b'"]}]
    assert result.review == [{"error_id": "e1", "reason": "flagged as suspicious, PATCHED (source: "
                                                          "feedback:support-team): contradicts the memory: "
                                                          "'q 1 | pipe' -> 'b'"}]
    md = result.markdown()
    assert "### ⚠ Corrections flagged as suspicious (1)" in md and "edited ⚠ suspicious |" in md
    assert md.index("flagged as suspicious") < md.index("### Edits")        # before the edits, not lost in them
    assert "| e0 | feedback:support-team | q 0 \\| pipe |" in md               # every edit's source
    form = result.summary()
    assert "⚠ Corrections flagged as suspicious (1)" in form
    assert "- `e1` from `feedback:support-team`, PATCHED: `q 1 | pipe` → `a`: `contradicts the memory: " in form
    assert f"**FAIL**: {SUSPICIOUS} 1 (<= 0)" in form


def test_a_held_suspicious_correction_passes_the_gate_but_is_shown_and_reviewed():
    result = gate(held(flagged(report(), "e2", source=""), "e2"), GateThresholds())
    assert result.passed and next(c for c in result.checks if c["name"] == SUSPICIOUS)["value"] == 0
    assert result.review == [{"error_id": "e2", "reason": "flagged as suspicious, held (not patched) (source: "
                                                          "unknown): contradicts the memory: 'q 2 | pipe' -> 'b'"}]
    assert "- `e2` from `an unknown source`, held (not patched): `q 2 | pipe`" in result.summary()
    assert "| e2 | unknown |" in result.markdown()
    r = held(flagged(report(), "e2"), "e2")
    r["failed_reasons"]["e2"] = "editing raised RuntimeError: boom"                 # failed for another reason too
    assert gate(r, GateThresholds()).review[0]["reason"].startswith("the edit failed (not patched): editing raised "
                                                                    "RuntimeError: boom; flagged as suspicious")


def test_a_threshold_may_allow_patched_suspicious_corrections_but_they_still_go_to_review():
    thresholds = GateThresholds.from_dict({"max_suspicious": 1, "retain": "0.9"})
    assert (thresholds.max_suspicious, thresholds.retain) == (1, 0.9) and isinstance(thresholds.max_suspicious, int)
    result = gate(flagged(report(), "e1"), thresholds)
    assert result.passed and [r["error_id"] for r in result.review] == ["e1"]
    assert not gate(flagged(report(), "e1", "e3"), thresholds).passed


def test_an_older_report_without_sources_or_flags_still_gates():
    result = gate(report(), GateThresholds())
    check = next(c for c in result.checks if c["name"] == SUSPICIOUS)
    assert result.passed and check["value"] is None and "not checked" in check["detail"]
    assert result.suspicious == [] and all(e["source"] == "" and e["suspicious"] == [] for e in result.edits)
    assert gate(flagged(report()), GateThresholds()).checks[-1]["value"] == 0


def test_locality_changes_from_earlier_versions_are_told_apart():
    r = report()
    r["locality"]["test"]["changed"] = [
        {"input": "x", "target": "y", "before": "y", "after": "z", "predates": False,
         "fired_by": [{"error_id": "e3", "preactivation": 0.42}]},
        {"input": "old one", "target": "y", "before": "y", "after": "w", "predates": True,
         "fired_by": [{"error_id": "v1-edit", "preactivation": 1.5}]}]
    result = gate(r, GateThresholds())
    assert [c["input"] for c in result.changed_now] == ["x"] and [c["input"] for c in result.changed_before] == \
        ["old one"]
    md = result.markdown()
    now, before = md.index("changed by this run's patches (1)"), md.index("changed already before this run "
                                                                           "(earlier versions) (1)")
    assert now < md.index("| test | x | y | y | z |") < before < md.index("| test | old one | y | y | w |")
    form = result.summary()
    assert "- test: `x`: `y` → `z`, moved by `e3` (0.42)" in form
    assert "old one" not in form and "1 more changed already before this run" in form
    assert gate(report(), GateThresholds()).changed_now[0]["predates"] is False      # an older report: this run's


def test_the_summary_is_short_and_links_the_full_report():
    r = flagged(report(), "e0", "e1")
    r["edits"] = [dict(e) for e in r["edits"] * 10]                   # a long run: 40 edits, 20 flagged
    result = gate(r, GateThresholds(max_suspicious=100))
    form = result.summary("Gate: m", link="http://ui/artifacts/artifact/1", where="s3://b/run/gate_report.md")
    assert form.startswith("**Gate: m: PASSED** · 4 edits, 0 failed, 4 neurons · SR 1.000 · GR 0.500")
    assert "**Checks: 9 of 9 pass**" in form and " · test: retain 1.000 · test: unchanged 0.995 · " in form
    assert form.index("Corrections flagged") < form.index("Locality examples changed") < form.index("**Checks")
    assert "[the gate-report artifact](http://ui/artifacts/artifact/1), `s3://b/run/gate_report.md`" in form
    assert "|---" not in form and "q 3" not in form                    # no edits table: that is the full report's
    assert form.count("contradicts") == 10 and "- and 10 more: in the full report" in form
    assert not any(x.startswith("|") for x in form.splitlines()) and len(form) < len(result.markdown()) / 2
    assert "the run's gate-report artifact" in gate(report(), GateThresholds()).summary()


def test_users_text_cannot_render_as_markdown():
    r = flagged(report(), "e0")
    r["edits"][0]["input"] = "see [this](http://evil.example) `now`\nplease"
    result = gate(r, GateThresholds())
    assert "`see [this](http://evil.example) 'now' please`" in result.summary()          # a code span
    assert "| see \\[this\\](http://evil.example) \\`now\\` please |" in result.markdown()    # escaped


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


def test_the_plot_as_markdown_carries_its_image_and_numbers():
    import base64
    import re

    points = [{"records": n, "edits": n - 1, "SR": 1.0, "ER": 1 - n / 100, "TestR": None, "neurons": n}
              for n in (5, 10, 20)]
    md = metrics_markdown(points, "m: metrics [x]")
    image = re.match(r"!\[m: metrics \(x\)\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)\n", md)
    assert image and base64.b64decode(image.group(1)).decode() == metrics_svg(points, "m: metrics [x]")
    assert "| records | edits | neurons | SR | ER |" in md and "| 20 | 19 | 20 | 1.000 | 0.800 |" in md
    assert "http" not in md.replace("http://www.w3.org", "")


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
