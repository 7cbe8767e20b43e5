"""Patch sets on disk: safetensors + JSON manifest, round trip, rollback by error id, base-model check,
and loading onto a fresh model (merged or as a branch) gives the editor's own outputs."""
import json

import pytest
import torch
from conftest import MEMORY
from safetensors.torch import load_file, save_file

from patcher import Editor, EditorConfig, Memory
from patcher.engine.examples import Example
from patcher.engine.patchset import PatchSet, load_patched
from patcher.engine.sequential import to_patchset
from patcher.models.base import load_model

EDITS = [("the capital of france is", "paris"), ("spain has its capital in", "madrid")]


@pytest.fixture(params=["ffn", "relu"])
def saved_model(request, tmp_path, tokenizer, make_model):
    """A tiny GPT-2 saved as a model directory, edited twice with the FFN's own activation (merges exactly)
    or ReLU (a branch, as the default knee neurons); -> (model_dir, editor, outcomes)."""
    model_dir = tmp_path / "model"
    model = make_model("gpt2")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    model, tok = load_model(model_dir)
    editor = Editor(model, tok, EditorConfig(activation=request.param))
    editor.memory = Memory.from_examples(editor.task, MEMORY)
    outcomes = [editor.edit(f"e{i}", text, target) for i, (text, target) in enumerate(EDITS)]
    assert all(o.succeeded for o in outcomes)
    return model_dir, editor, outcomes


def test_round_trip_and_manifest(tmp_path, saved_model):
    model_dir, editor, outcomes = saved_model
    out = to_patchset(editor, outcomes, "tiny-gpt2", model_dir).save(tmp_path / "patches")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "patches.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "patcher.engine.patchset/1"
    assert manifest["base_model"]["name"] == "tiny-gpt2" and len(manifest["base_model"]["sha256"]) == 64
    assert manifest["architecture"] == "gpt2" and manifest["layer"] == "transformer.h.1.mlp.c_proj"
    assert manifest["activation"] == ("gelu_new" if editor.cfg.activation == "ffn" else "relu")
    assert [e["error_id"] for e in manifest["edits"]] == ["e0", "e1"]
    assert manifest["edits"][0]["input"] == EDITS[0][0] and manifest["edits"][0]["target"] == "paris"
    assert [n["error_id"] for n in manifest["neurons"]] == editor.owners
    tensors = load_file(out / "patches.safetensors")
    assert set(tensors) == {"keys", "biases", "values", "bias_shifts"}
    loaded = PatchSet.load(out)
    assert torch.equal(loaded.neurons.keys, editor.neurons.keys) and loaded.owners == editor.owners
    shifted = editor.neurons.with_shifts(torch.arange(len(editor.neurons), dtype=torch.float32))
    editor.neurons = shifted            # a bias shift survives the round trip: a later run can take it back
    again = PatchSet.load(to_patchset(editor, outcomes, "tiny-gpt2", model_dir).save(tmp_path / "shifted"))
    assert torch.equal(again.neurons.shifts, shifted.shifts) and torch.equal(again.neurons.biases, shifted.biases)
    del tensors["bias_shifts"]          # a patch set from before bias shifts (and weights' sha256): none to take back
    save_file(tensors, out / "patches.safetensors")
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "weights_sha256"}))
    assert bool((PatchSet.load(out).neurons.shifts == 0).all())


@pytest.mark.parametrize("merge", [True, False])
def test_loaded_onto_a_fresh_model_matches_the_editor(tmp_path, saved_model, merge):
    model_dir, editor, outcomes = saved_model
    to_patchset(editor, outcomes, "tiny-gpt2", model_dir).save(tmp_path / "p")
    model, tok, patches = load_patched(model_dir, tmp_path / "p", merge=merge)
    assert (model._patch_branch is None) == (merge and editor.cfg.activation == "ffn")
    for text, target in EDITS:
        inputs, positions, _, _ = editor.task.encode([Example(text, target)])
        with torch.no_grad():
            logits = model(**inputs).logits[0, positions[0]]
        cached = editor.cache([Example(text, target)])[0]
        assert torch.allclose(logits, editor.logits(cached), atol=1e-4)
        assert tok.decode(logits.argmax(-1)).strip() == editor.judge(cached)[2]
    assert tok.decode(logits.argmax(-1)).strip() == EDITS[-1][1]           # the last edit holds for sure


def test_rollback_by_error_id(tmp_path, saved_model):
    model_dir, editor, outcomes = saved_model
    patches = to_patchset(editor, outcomes, "tiny-gpt2", model_dir)
    rolled = patches.without("e0")
    assert rolled.error_ids == ["e1"] and set(rolled.owners) == {"e1"}
    assert len(rolled) == len(patches) - outcomes[0].neurons
    rolled.save(tmp_path / "rolled")
    model, _, _ = load_patched(model_dir, tmp_path / "rolled")
    inputs, positions, targets, _ = editor.task.encode([Example(*EDITS[1])])
    with torch.no_grad():
        assert bool((model(**inputs).logits[0, positions[0]].argmax(-1) == targets[0]).all())
    with pytest.raises(KeyError, match="not in this patch set"):
        rolled.without("e0")


def test_wrong_base_model_is_refused(tmp_path, saved_model, make_model, tokenizer):
    model_dir, editor, outcomes = saved_model
    to_patchset(editor, outcomes, "tiny-gpt2", model_dir).save(tmp_path / "p")
    other = tmp_path / "other"
    make_model("gpt2", seed=7).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="was trained on base tiny-gpt2"):
        load_patched(other, tmp_path / "p")


def test_save_replaces_atomically(tmp_path, saved_model):
    model_dir, editor, outcomes = saved_model
    patches = to_patchset(editor, outcomes, "tiny-gpt2", model_dir)
    patches.save(tmp_path / "p")
    patches.without("e1").save(tmp_path / "p")
    assert PatchSet.load(tmp_path / "p").error_ids == ["e0"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary left


def test_not_a_patch_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a patch set"):
        PatchSet.load(tmp_path)
