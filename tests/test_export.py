"""ONNX export: the directory a fresh onnxruntime session loads, parity with PyTorch on the edits and a
locality sample (merged patches for BERT, a branch in the graph for Llama), and a loud failure when the
graph and the model disagree."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FACTS, MEMORY

from patcher import Editor, EditorConfig, Memory
from patcher.engine.sequential import to_patchset
from patcher.models.base import load_model
from patcher.serving.export import ExportParityError, _inputs, check_parity, export
from patcher.serving.onnx_model import onnx_logits, session


def edited_tiny(tmp_path, make_model, tokenizer, kind, config=EditorConfig()):
    model_dir = tmp_path / "model"
    make_model(kind).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    model, tok = load_model(model_dir)
    editor = Editor(model, tok, config)
    editor.memory = Memory.from_examples(editor.task, MEMORY)
    outcomes = [editor.edit(f"e{i}", f.input, f.target) for i, f in enumerate(FACTS[:3])]
    assert all(o.succeeded for o in outcomes)
    return model_dir, to_patchset(editor, outcomes, "tiny", model_dir).save(tmp_path / "patches")


def checked_inputs(patches, check) -> int:
    """The inputs an export's parity check covers: each edit's, the first row it remembered, the check sample."""
    edits = json.loads((patches / "manifest.json").read_text())["edits"]
    return len({*(e["input"] for e in edits), *(e["remembered"][0] for e in edits if e["remembered"]),
                *(c.input for c in check)})


def test_llama_branch_is_in_the_graph_and_a_disagreement_fails_loudly(tmp_path, make_model, tokenizer):
    model_dir, patches = edited_tiny(tmp_path, make_model, tokenizer, "llama")
    manifest = export(model_dir, patches, tmp_path / "onnx", MEMORY)
    assert manifest["patch_set"]["how"] == "branch in the graph" and manifest["patch_set"]["edits"] == 3
    assert manifest["parity"]["examples"] == checked_inputs(patches, MEMORY) > 3 + len(MEMORY)
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert not (tmp_path / "onnx.partial").exists()
    unpatched, tok = load_model(model_dir)          # the graph holds the patches; this model does not
    with pytest.raises(ExportParityError, match="differ between onnxruntime and PyTorch"):
        check_parity(unpatched, tok, tmp_path / "onnx" / "model.onnx", [f.input for f in FACTS[:3]])


def test_knee_patches_load_and_export_with_their_activation(tmp_path, make_model, tokenizer):
    model_dir, patches = edited_tiny(tmp_path, make_model, tokenizer, "llama", EditorConfig(activation="knee"))
    assert json.loads((patches / "manifest.json").read_text())["activation"] == "knee"
    manifest = export(model_dir, patches, tmp_path / "onnx", MEMORY)
    assert manifest["parity"]["examples"] == checked_inputs(patches, MEMORY)
    assert manifest["parity"]["max_abs_diff"] <= 1e-4


@pytest.mark.real
def test_real_factcheck_export_in_a_fresh_session(tmp_path, factcheck_model):
    from patcher.engine.patchset import load_patched
    from patcher.engine.records import read_records
    from patcher.engine.sequential import run_stream
    from patcher.facts.bank import all_facts, split_facts
    from patcher.facts.mistakes import task_examples
    from patcher.facts.sets import editor_on_facts

    model, tok = load_model(factcheck_model)
    split = split_facts(all_facts(), seed=0)
    # the FFN's own activation (GELU): merged into the weights. The default (ReLU) exports as a branch,
    # which the pipeline's serving test covers on this model.
    editor, _, _ = editor_on_facts(model, tok, EditorConfig(activation="ffn"), split)
    records = read_records("data/errors/factcheck-minilm.jsonl")[:8]
    outcomes = run_stream(editor, records, progress=False)
    to_patchset(editor, outcomes, "factcheck-minilm", factcheck_model).save(tmp_path / "patches")
    proc = subprocess.run([sys.executable, "-m", "patcher.cli", "export", "--model", str(factcheck_model),
                           "--patches", str(tmp_path / "patches"), "--out", str(tmp_path / "onnx"),
                           "--locality", "40", "--version", "v3.0.0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert manifest["patch_set"]["how"] == "merged" and manifest["patch_set"]["version"] == "v3.0.0"
    assert set(manifest["files"]) >= {"model.onnx", "config.json", "tokenizer.json"}
    assert manifest["parity"]["max_abs_diff"] <= 1e-4

    sess = session(tmp_path / "onnx" / "model.onnx")                  # a consumer: onnxruntime only
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    texts = [r.input for r in records] + [e.input for e in task_examples("classification", split["test"][:20])]
    labels = np.asarray(onnx_logits(sess, _inputs(tok, texts))).argmax(-1)
    patched, _, _ = load_patched(factcheck_model, tmp_path / "patches")
    with torch.no_grad():
        expected = patched(**_inputs(tok, texts)).logits.argmax(-1).numpy()
    assert (labels == expected).all()
    fixed = [o.error_id for o in outcomes if o.succeeded]
    assert fixed and all(patched.config.id2label[int(labels[i])] == r.target
                         for i, r in enumerate(records) if r.id in fixed)    # every edit holds in ONNX


@pytest.mark.real
def test_real_smollm2_export_with_patches_as_a_branch(tmp_path, smollm2_model):
    from patcher.engine.records import read_records
    from patcher.engine.sequential import run_stream
    from patcher.facts.bank import all_facts, split_facts
    from patcher.facts.sets import editor_on_facts
    from patcher.pipeline.catalog import Catalog
    from patcher.serving.onnx_model import OnnxModel
    from patcher.serving.release import locality_sample

    torch.set_num_threads(2)
    model, tok = load_model(smollm2_model)
    split = {k: v[:120] for k, v in split_facts(all_facts(), seed=0).items()}    # a small memory: quick
    editor, _, _ = editor_on_facts(model, tok, EditorConfig(subject_layer=9), split)   # as in production
    records = read_records("data/errors/facts-smollm2.jsonl")[:3]
    outcomes = run_stream(editor, records, progress=False)
    to_patchset(editor, outcomes, "facts-smollm2", smollm2_model).save(tmp_path / "patches")
    check = locality_sample(Catalog().entry("facts-smollm2"), 6)
    manifest = export(smollm2_model, tmp_path / "patches", tmp_path / "onnx", check, version="v0001")
    torch.set_num_threads(1)
    assert manifest["patch_set"]["how"] == "branch in the graph" and manifest["patch_set"]["edits"] == 3
    assert manifest["parity"]["examples"] == checked_inputs(tmp_path / "patches", check)

    assert manifest["cache"] == {"layers": 30, "kv_heads": 3, "head_dim": 64, "subject_layers": 1,
                                 "subject_neurons": manifest["patch_set"]["neurons"]}

    served = OnnxModel(tmp_path / "onnx")                 # a consumer: onnxruntime and the tokenizer only
    assert served.task == "generation" and served.version == "v0001" and served.cached
    texts = [r.input for r in records] + [c.input for c in check]
    answers = [a["answer"] for a in served(texts, max_new_tokens=6)]            # one left-padded batch
    fixed = {o.error_id for o in outcomes if o.succeeded}
    assert fixed and all(a.startswith(r.target) for r, a in zip(records, answers) if r.id in fixed)
    alone = [served([t], max_new_tokens=6)[0]["answer"] for t in texts]           # batch of one each
    assert alone == answers

    # a standard client, unmodified: onnxruntime-genai reads genai_config.json and decodes with the cache
    import onnxruntime_genai as og

    client = og.Model(str(tmp_path / "onnx"))
    client_tokenizer = og.Tokenizer(client)
    for text, answer in zip(texts, answers):
        ids = client_tokenizer.encode(text)
        assert list(ids) == tok(text)["input_ids"]
        params = og.GeneratorParams(client)
        params.set_search_options(max_length=len(ids) + 6, do_sample=False)
        generator = og.Generator(client, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        said = client_tokenizer.decode(generator.get_sequence(0)[len(ids):])
        assert said.split("\n")[0].strip() == answer.split("\n")[0], text


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoders_export_a_kv_cache_that_carries_the_subject_scores(tmp_path, make_model, tokenizer, kind):
    model_dir, patches = edited_tiny(tmp_path, make_model, tokenizer, kind, EditorConfig(subject_layer=0))
    manifest = export(model_dir, patches, tmp_path / "onnx", MEMORY)     # parity: cached decoding, step by step
    layers = make_model(kind).config.num_hidden_layers
    assert manifest["cache"]["layers"] == layers and manifest["cache"]["subject_layers"] == 1
    assert manifest["cache"]["subject_neurons"] == manifest["patch_set"]["neurons"]
    sess = session(tmp_path / "onnx" / "model.onnx")
    assert [i.name for i in sess.get_inputs()][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert sum(i.name.startswith("past_key_values.") for i in sess.get_inputs()) == 2 * (layers + 1)
    genai = json.loads((tmp_path / "onnx" / "genai_config.json").read_text())["model"]["decoder"]
    assert genai["num_hidden_layers"] == layers + 1 and genai["inputs"]["past_key_names"] == "past_key_values.%d.key"


def test_an_answer_ends_at_any_end_token_the_generation_config_names(tokenizer):
    from patcher.serving.onnx_model import end_ids

    assert end_ids({"eos_token_id": [7, 9]}, tokenizer) == {7, 9, tokenizer.eos_token_id} - {None}
    assert end_ids({"eos_token_id": 7}, tokenizer) == {7, tokenizer.eos_token_id} - {None}
    assert end_ids(None, tokenizer) == {tokenizer.eos_token_id} - {None}


def test_a_left_padding_tokenizer_exports_with_parity(tmp_path, make_model, tokenizer):
    import copy

    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"                 # the reference runs at the positions the graph is given
    model_dir, patches = edited_tiny(tmp_path, make_model, left, "llama", EditorConfig(subject_layer=0))
    manifest = export(model_dir, patches, tmp_path / "onnx", MEMORY)
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
