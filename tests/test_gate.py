"""The gate's decisions on train reports, its Markdown for the reviewer, the settings it reads, the plot."""
import pytest

from patcher.pipeline.gate import GateThresholds, gate
from patcher.pipeline.plot import metrics_svg
from patcher.pipeline.settings import PipelineSettings


def report(**metrics):
    base = {"SR": 1.0, "GR": 0.5, "ER": 1.0, "TrainR": 1.0, "TestR": 1.0, "n_edits": 4, "n_failed": 0,
            "n_skipped_already_correct": 1, "n_neurons": 4, "edit_seconds_median": 0.1}
    edits = [{"error_id": f"e{i}", "input": f"q {i} | pipe", "target": "a", "status": "edited", "before": "b",
              "after": "a", "final": "a"} for i in range(4)] + \
            [{"error_id": "s", "input": "q", "target": "a", "status": "skipped", "before": "a", "after": "a"}]
    return {"model": "m", "metrics": {**base, **metrics}, "registry_ER": 1.0, "registry_wrong": [], "failed_ids": [],
            "edits": edits, "train_changed": [], "test_changed": [{"input": "x", "target": "y", "before": "y",
                                                                    "after": "z"}]}


def test_passes_and_reports():
    result = gate(report(), GateThresholds())
    assert result.passed and result.review == []
    md = result.markdown()
    assert "PASSED" in md and "q 0 \\| pipe" in md and "| test | x | y | y | z |" in md
    assert "| s |" not in md                        # already-right records are not edits


@pytest.mark.parametrize("change, failing", [
    ({"TestR": 0.98}, "TestR"), ({"TrainR": 0.5}, "TrainR"), ({"n_failed": 3}, "failed edits (share)")])
def test_each_threshold_fails_the_gate(change, failing):
    result = gate(report(**change), GateThresholds())
    assert not result.passed
    assert [c["name"] for c in result.checks if not c["passed"]] == [failing]
    assert "FAILED" in result.markdown()


def test_a_broken_edit_fails_and_goes_to_review():
    r = report()
    r["registry_ER"], r["registry_wrong"], r["failed_ids"] = 0.75, ["e2"], ["e9"]
    result = gate(r, GateThresholds())
    failing = {c["name"] for c in result.checks if not c["passed"]}
    assert failing == {"ER (every edit of the patch set)", "each new patch's own edit holds"}
    assert {x["error_id"] for x in result.review} == {"e2", "e9"}


def test_settings_load_overrides_and_refuse_unknown(tmp_path):
    (tmp_path / "params.yaml").write_text("gate:\n  test_retain: 0.9\napprove:\n  policy: manual\nfacts:\n  seed: 1\n")
    s = PipelineSettings.load(tmp_path / "params.yaml", {"approve": {"policy": "auto"}})
    assert s.gate.test_retain == 0.9 and s.gate.train_retain == 0.99 and s.approve.policy == "auto"
    assert PipelineSettings.load(tmp_path / "missing.yaml").ingest.root == "s3://patcher"
    with pytest.raises(ValueError, match="tset_retain"):
        PipelineSettings.load(None, {"gate": {"tset_retain": 1}})
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
    # bench/sequential.py's `reference` editor applies them over the model's params.yaml settings
    from patcher import EditorConfig
    from patcher.engine.config import REFERENCE_SETTINGS

    pipeline = PipelineSettings.load().train.editor_overrides(model)
    assert EditorConfig(**{**pipeline, **REFERENCE_SETTINGS}) == EditorConfig.reference()
