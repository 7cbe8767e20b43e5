"""The `patcher` command end to end on a tiny model directory: edit, edit on top, eval, config, and clear
errors for bad input."""
import json
import subprocess
import sys
import tempfile

import pytest
from conftest import MEMORY

from patcher import Editor

CACHE = tempfile.mkdtemp(prefix="patcher-cli-test-")
RECORDS = [("e0", "the capital of france is", "paris"), ("e1", "spain has its capital in", "madrid")]


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "patcher.cli", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PATCHER_CACHE": CACHE})
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def record(i, text, target):
    return {"id": i, "model": "tiny", "task": "generation", "input": text, "prediction": "?", "target": target,
            "logged_at": "2026-11-24T10:00:00+00:00", "rephrases": [text.replace("the ", "")]}


@pytest.fixture
def workdir(tmp_path, tokenizer, make_model):
    make_model("gpt2").save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_jsonl(tmp_path / "errors.jsonl", [record(*r) for r in RECORDS[:1]])
    write_jsonl(tmp_path / "more.jsonl", [record(*r) for r in RECORDS[1:]])
    write_jsonl(tmp_path / "memory.jsonl", [{"input": m.input, "target": m.target} for m in MEMORY[:7]])
    # locality: held-out inputs with the unpatched model's own answers, so its accuracy there is 1
    editor = Editor(make_model("gpt2"), tokenizer)
    answers = editor.predictions(editor.cache(MEMORY[7:]))
    write_jsonl(tmp_path / "locality.jsonl", [{"input": m.input, "target": a} for m, a in zip(MEMORY[7:], answers)])
    return tmp_path


def test_edit_then_edit_on_top_then_eval(workdir):
    w = workdir
    run("edit", "--model", str(w / "model"), "--errors", str(w / "errors.jsonl"), "--out", str(w / "v1"),
        "--memory", str(w / "memory.jsonl"), "--metrics", str(w / "m1.json"), "--quiet")
    r1 = json.loads((w / "m1.json").read_text())
    m1 = r1["metrics"]
    assert m1["SR"] == 1.0 and m1["ER"] == 1.0 and m1["n_edits"] == 1 and m1["n_failed"] == 0
    assert set(m1) >= {"GR", "TrainR", "TestR", "n_skipped_already_correct", "edit_seconds_median"}
    assert m1["TrainR"] is None and r1["edits"][0]["status"] == "edited" and r1["locality"] == {}

    run("edit", "--model", str(w / "model"), "--errors", str(w / "more.jsonl"), "--patches", str(w / "v1"),
        "--out", str(w / "v2"), "--memory", str(w / "memory.jsonl"), "--metrics", str(w / "m2.json"),
        "--locality", str(w / "locality.jsonl"), "--quiet")
    r2 = json.loads((w / "m2.json").read_text())
    m2, test = r2["metrics"], r2["locality"]["test"]
    manifest = json.loads((w / "v2" / "manifest.json").read_text())
    assert [e["error_id"] for e in manifest["edits"]] == ["e0", "e1"]     # v2 = v1's edits + the new one
    assert m2["n_edits"] == 1 and m2["SR"] == 1.0 and test["accuracy_before"] == 1.0 and r2["registry_ER"] == 1.0
    assert m2["TestR"] == test["retain"] == test["unchanged"] and 0 <= m2["TestR"] <= 1

    proc = run("eval", "--model", str(w / "model"), "--patches", str(w / "v2"), "--errors",
               str(w / "more.jsonl"), "--locality", str(w / "locality.jsonl"), "--out", str(w / "eval.json"))
    result = json.loads((w / "eval.json").read_text())
    assert result["ER"] == 1.0 and result["n_neurons"] == len(manifest["neurons"]) and result["wrong_ids"] == []
    assert json.loads(proc.stdout)["ER"] == 1.0


def test_eval_reads_a_patch_set_with_its_own_subject_layer(workdir):
    w = workdir
    run("edit", "--model", str(w / "model"), "--errors", str(w / "errors.jsonl"), "--out", str(w / "v1"),
        "--memory", str(w / "memory.jsonl"), "--set", "subject_layer=0", "--quiet")
    proc = run("eval", "--model", str(w / "model"), "--patches", str(w / "v1"), "--errors", str(w / "errors.jsonl"),
               "--out", str(w / "eval.json"))           # no --set: the patch set's own subject layer, said so
    assert json.loads((w / "eval.json").read_text())["ER"] == 1.0
    assert "subject_layer 0 (the patch set's own; the settings ask for None)" in proc.stderr


def test_bad_record_is_named_and_nothing_written(workdir):
    w = workdir
    bad = record("e9", "the capital of peru is", "lima")
    del bad["target"]
    write_jsonl(w / "bad.jsonl", [record(*RECORDS[0]), bad])
    proc = run("edit", "--model", str(w / "model"), "--errors", str(w / "bad.jsonl"), "--out", str(w / "x"),
               check=False)
    assert proc.returncode == 2
    assert "bad.jsonl:2 (id 'e9'): missing field 'target'" in proc.stderr
    assert not (w / "x").exists()


def test_failed_edits_are_reported_and_strict_exits_3(workdir):
    w = workdir
    proc = run("edit", "--model", str(w / "model"), "--errors", str(w / "errors.jsonl"), "--out", str(w / "f"),
               "--memory", str(w / "memory.jsonl"), "--set", "max_steps=2", "--metrics", str(w / "f.json"), "--strict",
               "--quiet", check=False)
    assert proc.returncode == 3 and "failed: e0" in proc.stderr
    report = json.loads((w / "f.json").read_text())
    assert report["metrics"]["n_failed"] == 1 and report["failed_ids"] == ["e0"] and report["metrics"]["SR"] == 0.0
    assert json.loads((w / "f" / "manifest.json").read_text())["n_neurons"] == 0


def test_config_lists_reference_defaults():
    out = run("config").stdout
    assert "lr" in out and "0.01" in out and "max_steps" in out and "2000" in out


def test_unknown_setting_is_refused(workdir):
    proc = run("edit", "--model", str(workdir / "model"), "--errors", "x", "--out", "y", "--set", "lr2=1",
               check=False)
    assert proc.returncode != 0 and "unknown setting 'lr2'" in proc.stderr


def test_registry_list_without_a_model_lists_every_model(tmp_path, tokenizer, make_model):
    from patcher.engine.sequential import to_patchset
    from patcher.pipeline.registry import Registry, live_base

    w = tmp_path
    to_patchset(Editor(make_model("gpt2"), tokenizer), [], "tiny", None).save(w / "v1")     # an empty patch set
    registry = Registry.init(w / "reg")                                   # no DVC remote: weights stay local
    assert registry.models() == []
    for model, reviewer in (("tiny-b", "bob"), ("tiny-a", "alice"), ("tiny-b", "carol")):
        registry.register(model, w / "v1", None, {"approved": True, "reviewer": reviewer})
    every = run("registry", "list", "--repo", str(w / "reg")).stdout.splitlines()
    assert [(line.split()[:2], line.split()[-1]) for line in every] == \
        [(["tiny-a", "v1.0.0"], "alice"), (["tiny-b", "v1.0.0"], "bob"), (["tiny-b", "v2.0.0"], "carol")]
    one = run("registry", "list", "--repo", str(w / "reg"), "--model", "tiny-b").stdout.splitlines()
    assert [line.split()[0] for line in one] == ["v1.0.0", "v2.0.0"]              # as before: no name column
    assert run("registry", "show", "--repo", str(w / "reg"), check=False).returncode == 2   # others need --model

    # what `patcher train --registry` and the pipeline build on: the latest version, or nothing
    assert live_base(None, "tiny-b", w / "b0") == (None, {}) and live_base(w / "reg", "tiny-c", w / "b0") == (None, {})
    base, held = live_base(w / "reg", "tiny-b", w / "b1")
    assert (len(base), held) == (0, {}) and (w / "b1" / "manifest.json").exists()
