"""The model catalog: `patcher models add` checks a user's model and data before writing its entry and names
what is wrong; `patcher edit --model NAME` takes the memory, suites and settings from the entry; an edit without
a memory is refused unless asked for, and recorded when it is."""
import json
from pathlib import Path

import pytest
import torch
from conftest import FACTS, MEMORY

from patcher.cli import main
from patcher.engine.editor import Editor
from patcher.engine.patchset import PatchSet
from patcher.engine.suites import base_answers
from patcher.models.base import load_model
from patcher.pipeline.catalog import Catalog


def save_tiny(make_model, tokenizer, arch, where):
    model = make_model(arch)
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def user(tmp_path, make_model, tokenizer):
    """A user's folder: a tiny classifier and a tiny LM, inputs-only memories, a suite without targets."""
    save_tiny(make_model, tokenizer, "bert", tmp_path / "classifier")
    save_tiny(make_model, tokenizer, "llama", tmp_path / "lm")
    jsonl(tmp_path / "memory.jsonl", [{"input": m.input} for m in MEMORY])
    jsonl(tmp_path / "regression.jsonl", [{"input": f.input} for f in FACTS[2:]])
    jsonl(tmp_path / "errors.jsonl", [
        {"id": f"e{i}", "model": "lm", "task": "generation", "input": f.input, "prediction": "x", "target": f.target,
         "logged_at": "2026-12-07T10:00:00Z"} for i, f in enumerate(FACTS[:2])])
    jsonl(tmp_path / "lm-memory.jsonl", [{"input": m.input, "target": m.target} for m in MEMORY])
    jsonl(tmp_path / "lm-regression.jsonl", [{"input": f.input, "target": f.target} for f in FACTS[2:]])
    return tmp_path


def add(user, name, *extra):
    return main(["models", "add", name, "--catalog", str(user / "catalog.yaml"), *extra])


def test_add_checks_the_model_and_writes_the_entry(user, capsys):
    assert add(user, "tickets", "--path", "classifier", "--task", "classification", "--memory", "memory.jsonl",
               "--locality", "regression=regression.jsonl", "--set", "max_steps=300", "--gate", "unchanged=0.98") == 0
    out = capsys.readouterr().out
    assert "ffn: bert.encoder.layer.1.output.dense" in out and "labels:" in out and "L2" in out
    catalog = Catalog(user / "catalog.yaml")
    entry = catalog.entry("tickets")
    assert entry.editor == {"max_steps": 300} and entry.gate == {"unchanged": 0.98}
    assert entry.model_dir() == (user / "classifier").resolve() and entry.locality == {"regression": "regression.jsonl"}
    memory, validation, suites = entry.data()
    assert len(memory.rows) + len(validation.rows) == len(MEMORY) and not suites["regression"].has_targets
    assert add(user, "tickets", "--path", "classifier", "--task", "classification", "--memory", "memory.jsonl") == 2
    assert "already in" in capsys.readouterr().err                          # --force replaces it
    assert main(["models", "list", "--catalog", str(user / "catalog.yaml")]) == 0
    assert "tickets" in capsys.readouterr().out


def test_add_refuses_bad_entries_and_names_the_problem(user, capsys, make_model, tokenizer):
    import transformers as tf

    roberta = tf.RobertaForSequenceClassification(tf.RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3))
    roberta.save_pretrained(user / "roberta")
    tokenizer.save_pretrained(user / "roberta")
    (user / "bad.jsonl").write_text('{"input": "fine"}\n{"input": 3}\n')
    cases = [
        (["--path", "nowhere", "--task", "classification", "--memory", "memory.jsonl"], "no model directory at"),
        (["--path", "roberta", "--task", "classification", "--memory", "memory.jsonl"],
         "unsupported architecture RobertaForSequenceClassification"),
        (["--path", "classifier", "--task", "generation", "--memory", "memory.jsonl"],
         "task 'generation', but BertForSequenceClassification does classification"),
        (["--path", "lm", "--task", "generation", "--memory", "bad.jsonl"], "bad.jsonl:2: input must be a string"),
        (["--path", "lm", "--task", "generation", "--memory", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--path", "lm", "--task", "classification", "--prompt-format", "chat", "--memory", "memory.jsonl"],
         "prompt_format chat is for generation models"),
    ]
    for args, problem in cases:
        assert add(user, "m", *args) == 2, problem
        assert problem in capsys.readouterr().err
    assert not (user / "catalog.yaml").exists()                            # nothing written for a bad entry


def test_edit_by_name_takes_memory_suites_and_settings_from_the_catalog(user, capsys):
    torch.manual_seed(0)
    assert add(user, "lm", "--path", "lm", "--task", "generation", "--memory", "lm-memory.jsonl",
               "--locality", "regression=lm-regression.jsonl", "--set", "max_steps=400", "--gate", "unchanged=0.5") == 0
    capsys.readouterr()
    catalog = str(user / "catalog.yaml")
    edit = ["edit", "--model", "lm", "--catalog", catalog, "--errors", str(user / "errors.jsonl"), "--quiet",
            "--params", str(user / "none.yaml")]
    assert main([*edit, "--out", str(user / "p1"), "--metrics", str(user / "m1.json")]) == 0
    report = json.loads((user / "m1.json").read_text())
    assert report["metrics"]["n_edits"] == 2 and report["metrics"]["SR"] == 1.0 and report["registry_ER"] == 1.0
    assert report["editor"]["max_steps"] == 400                               # the entry's settings
    assert report["data"]["memory"]["sha256"] == PatchSet.load(user / "p1").data["memory"]["sha256"]
    assert report["data"]["memory"]["rows"] + report["data"]["validation"]["rows"] == len(MEMORY)
    suite = report["locality"]["regression"]
    assert suite["targets"] is True and suite["examples"] == len(FACTS) - 2
    assert suite["accuracy_before"] == 0.0 and suite["retain"] is None      # a random model knows none of them
    assert 0.0 <= suite["unchanged"] <= 1.0
    # flags override the entry
    assert main([*edit, "--out", str(user / "p3"), "--metrics", str(user / "m3.json"), "--set", "max_steps=300"]) == 0
    assert json.loads((user / "m3.json").read_text())["editor"]["max_steps"] == 300
    # the same run made to miss its gate: said on stderr, and in the exit status with --strict
    entry = Catalog(catalog).entry("lm")
    Catalog(catalog).put(type(entry).from_dict("lm", {**entry.to_dict(), "gate": {"unchanged": 1.01}}, entry.home))
    capsys.readouterr()
    assert main([*edit, "--out", str(user / "p2"), "--strict"]) == 3
    assert "below lm's gate: regression unchanged" in capsys.readouterr().err


def test_rows_without_targets_take_the_base_models_answers(user):
    from patcher.engine.metrics import LocalitySet
    from patcher.engine.suites import examples, read_rows

    editor = Editor(*load_model(user / "classifier"))
    rows = read_rows(user / "regression.jsonl")
    found, dropped = examples(editor, rows)
    assert dropped == 0 and [e.target for e in found] == base_answers(editor, [f.input for f in FACTS[2:]])
    assert {e.target for e in found} <= set(editor.task.labels)
    suite = LocalitySet.build(editor, "regression", found, rows.has_targets)
    assert suite.ratio(editor) is None and suite.unchanged(editor) == 1.0 and suite.accuracy_before == 1.0


def test_an_edit_without_memory_is_refused_unless_asked_for_and_then_recorded(user, capsys):
    base = ["edit", "--model", str(user / "lm"), "--errors", str(user / "errors.jsonl"), "--quiet",
            "--params", str(user / "none.yaml"), "--catalog", str(user / "catalog.yaml")]
    assert main([*base, "--out", str(user / "p")]) == 2
    err = capsys.readouterr().err
    assert "has no memory" in err and "--no-memory" in err and not (user / "p").exists()
    assert main([*base, "--out", str(user / "p"), "--no-memory"]) == 0
    assert "WARNING: --no-memory" in capsys.readouterr().err
    assert PatchSet.load(user / "p").data["no_memory"] is True
    # a model directory with the flags' files is an entry too
    assert main([*base, "--out", str(user / "q"), "--memory", str(user / "memory.jsonl"),
                 "--locality", f"regression={user / 'regression.jsonl'}"]) == 0
    assert "regression unchanged" in capsys.readouterr().err


def test_prefect_yaml_gets_one_hourly_deployment_per_catalog_model(user, tmp_path, capsys):
    import shutil

    import yaml

    from patcher.pipeline.deployments import write_deployments

    assert add(user, "tickets", "--path", "classifier", "--task", "classification", "--memory", "memory.jsonl") == 0
    prefect_yaml = shutil.copy(Path(__file__).resolve().parent.parent / "prefect.yaml", tmp_path / "prefect.yaml")
    names = write_deployments(prefect_yaml, Catalog(user / "catalog.yaml"))
    data = yaml.safe_load(Path(prefect_yaml).read_text())
    pipelines = [d for d in data["deployments"] if d["entrypoint"] == "flows/pipeline.py:pipeline"]
    assert names == ["hourly-tickets"] and [d["parameters"]["model"] for d in pipelines] == ["tickets"]
    assert "train-gpu" in {d["name"] for d in data["deployments"]}                 # the other deployments stay
    assert "# Prefect deployments of the pipeline" in Path(prefect_yaml).read_text()  # and the comments


def test_model_and_data_from_s3_checked_by_sha256(user, s3_env, capsys):
    from patcher.engine.files import sha256
    from patcher.engine.patchset import weights_sha256
    from patcher.pipeline.store import upload_dir, write_bytes

    upload_dir(user / "classifier", f"{s3_env}/models/tickets")
    write_bytes(f"{s3_env}/data/memory.jsonl", (user / "memory.jsonl").read_bytes())
    digest = weights_sha256(user / "classifier")
    assert add(user, "tickets", "--path", f"{s3_env}/models/tickets", "--sha256", digest, "--task", "classification",
               "--memory", f"{s3_env}/data/memory.jsonl") == 0
    entry = Catalog(user / "catalog.yaml").entry("tickets")
    assert weights_sha256(entry.model_dir()) == digest and entry.model_dir() != user / "classifier"
    memory, validation, _ = entry.data()
    assert {r["input"] for r in memory.rows + validation.rows} == {m.input for m in MEMORY}
    assert memory.sha256 == sha256(user / "memory.jsonl")                   # recorded in every run's report
    capsys.readouterr()
    assert add(user, "other", "--path", f"{s3_env}/models/tickets", "--sha256", "0" * 64, "--task", "classification",
               "--memory", "memory.jsonl") == 2
    assert f"the catalog says {'0' * 64}" in capsys.readouterr().err
