"""The subject key (EditorConfig.subject_layer): a(t) = k.q[t] + b + max_{p<=t} u.z[p]. The cached path stays
exact against the whole model with the branch, the running max carries over a KV cache and skips left padding,
the memory samples whole prompts, and subject patches save, load and export to ONNX."""
import pytest
import torch
from conftest import FACTS, MEMORY

from patcher import Editor, EditorConfig, Memory, PatchBranch, PatchNeurons
from patcher.engine.examples import Example
from patcher.engine.patchset import PatchSet, load_patched
from patcher.engine.sequential import build_editor, to_patchset
from patcher.engine.subject import running_max, shared_text, subject_position
from patcher.models.base import load_model
from patcher.pipeline.train import TrainSettings
from patcher.serving.export import export

PHRASING = "the capital city of {} is"


def subject_editor(make_model, tokenizer, arch="llama", **cfg):
    editor = Editor(make_model(arch), tokenizer, EditorConfig(subject_layer=0, **cfg))
    editor.memory = Memory.from_examples(editor.task, MEMORY[:7])
    editor.val_memory = Memory.from_examples(editor.task, MEMORY[7:])
    return editor


def edit_facts(editor, n=3):
    return [editor.edit(f"e{i}", f.input, f.target, phrasings=[PHRASING.format(f.input.split()[3])])
            for i, f in enumerate(FACTS[:n])]


def random_neurons(n=3, hidden=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)                                   # noqa: E731
    return PatchNeurons(r(n, hidden) * 0.3, r(n), r(n, hidden), "relu", r(n, hidden) * 0.3, 0)


@pytest.mark.parametrize("length", [1, 2, 7, 70, 300])
def test_running_max_and_its_onnx_form(monkeypatch, length):
    s = torch.randn(2, length, 3)
    expected = torch.stack([s[:, : t + 1].amax(1) for t in range(length)], 1)
    assert torch.equal(running_max(s), expected)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)         # the doubling scan
    assert torch.equal(running_max(s), expected)


def test_the_subject_is_the_text_an_input_shares_with_its_phrasings(tokenizer):
    text = "The capital of France is"
    subject = shared_text(text, ["France has its seat of government in", "Which city is France's capital?"])
    assert subject == "France"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[subject_position(tokenizer, text, subject)] == "france"
    assert shared_text(text, []) == text                                          # no phrasings: the whole input


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_path_equals_the_whole_model_with_the_branch(arch, tokenizer, make_model):
    editor = subject_editor(make_model, tokenizer, arch)
    outcomes = edit_facts(editor)
    assert sum(o.succeeded for o in outcomes) >= 2 and editor.neurons.subject_keys.shape == (len(editor.neurons), 32)
    cached = editor.cache([Example(f.input, f.target) for f in FACTS])
    branch = PatchBranch(editor.arch, editor.neurons)
    try:
        for f, c in zip(FACTS, cached):
            inputs, positions, _, _ = editor.task.encode([Example(f.input, f.target)])
            with torch.no_grad():
                logits = editor.model(**inputs).logits[0, positions[0]]
            assert torch.allclose(logits, editor.logits(c), atol=1e-5)
    finally:
        branch.remove()
    for o, c in zip(outcomes, cached):
        if o.succeeded:
            assert editor.judge(c)[2] == o.target


def test_running_max_carries_over_the_kv_cache_and_skips_left_padding(tokenizer, make_model):
    model = make_model("llama")
    branch = PatchBranch(Editor(model, tokenizer).arch, random_neurons())
    ids = tokenizer("the capital of france is a city on the river", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits                           # (1, T, V)
        out = model(input_ids=ids[:, :4], use_cache=True)
        steps, past = [out.logits[:, -1]], out.cache
        for t in range(4, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], cache=past, use_cache=True)
            steps.append(out.logits[:, -1])
            past = out.cache
        assert torch.allclose(torch.stack(steps, 1), full[:, 3:], atol=1e-5)
        short = ids[:, :5]
        pad = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)              # left padding
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(short)], 1)
        padded = model(input_ids=pad, attention_mask=mask, use_cache=False).logits[:, -1]
        alone = model(input_ids=short, use_cache=False).logits[:, -1]
        assert torch.allclose(padded, alone, atol=1e-4)
    branch.remove()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids, use_cache=False).logits, full)   # the branch did something


def test_memory_samples_whole_prompts_and_negatives_join_it(tokenizer, make_model):
    editor = subject_editor(make_model, tokenizer)
    cached = editor.cache(MEMORY)
    memory = Memory.from_cached(cached, max_vectors=30, seed=0)
    assert len(memory) <= 30 and int(memory.lengths.sum()) == len(memory) == len(memory.z)
    kept = {len(c.q_memory) for c in cached}
    assert set(memory.lengths.tolist()) <= kept                                   # whole prompts only
    before = len(editor.memory)
    negative = "the language of france is"
    editor.edit("e0", FACTS[0].input, FACTS[0].target, negatives=[negative])
    grown = len(editor.memory) - before
    assert grown == len(editor.cache([Example(negative, "x")])[0].q_memory) + len(editor.edited["e0"].q_memory)
    # a later edit that trains on that prompt leaves its rows out of its memory loss (they are its own wording)
    rows = len(editor.cache([Example(negative, "x")])[0].q_memory)
    assert len(editor.memory.rows_of([negative])) == rows
    skipped, top = [], editor.memory.top_preactivation
    editor.memory.top_preactivation = lambda *args: skipped.append(args[3]) or top(*args)
    outcome = editor.edit("e1", FACTS[1].input, FACTS[1].target, phrasings=[negative])
    assert outcome.steps > 0 and len(skipped) >= outcome.steps
    assert all(s is not None and len(s) == rows for s in skipped)


def test_a_patch_set_keeps_the_prompts_each_edit_added_to_the_memory(tmp_path, tokenizer, make_model):
    # a pipeline run on top of a registry version must keep new neurons silent on earlier edits' training
    # wordings and negatives, as one long run would, not only on their inputs
    editor = subject_editor(make_model, tokenizer)
    negative = "the language of france is"
    wording = PHRASING.format("france")
    first = editor.edit("e0", FACTS[0].input, FACTS[0].target, phrasings=[wording], negatives=[negative])
    outcomes = [first, editor.edit("e1", FACTS[1].input, FACTS[1].target)]
    assert first.status == "edited" and editor.remembered["e0"] == [negative, FACTS[0].input, wording]
    loaded = PatchSet.load(to_patchset(editor, outcomes, "tiny", None).save(tmp_path / "patches"))
    entries = {e["error_id"]: e for e in loaded.edits}
    assert entries["e0"]["remembered"] == [negative, FACTS[0].input, wording]
    again = build_editor(editor.model, tokenizer, EditorConfig(subject_layer=0), MEMORY[:7], patches=loaded)
    for entry in loaded.edits:
        for text in entry["remembered"]:
            assert len(again.memory.rows_of([text])) == len(editor.memory.rows_of([text])), text
    assert set(again.edited) == set(entries) and again.remembered["e0"] == entries["e0"]["remembered"]
    # a record the model already got right owns no neuron, but its prompt joined the memory: so it does on resume
    right = editor.predictions(editor.cache([Example(FACTS[2].input, "x")]))[0]
    skipped = editor.edit("s0", FACTS[2].input, right)
    assert skipped.status == "skipped"
    kept = PatchSet.load(to_patchset(editor, [*outcomes, skipped], "tiny", None).save(tmp_path / "kept"))
    assert [e["error_id"] for e in kept.remembered] == ["s0"] and kept.remembered[0]["status"] == "skipped"
    assert "s0" not in {e["error_id"] for e in kept.edits}
    resumed = build_editor(editor.model, tokenizer, EditorConfig(subject_layer=0), MEMORY[:7], patches=kept)
    assert len(resumed.memory.rows_of([FACTS[2].input])) == len(editor.memory.rows_of([FACTS[2].input]))
    assert "s0" not in resumed.edited, "a skipped record is no edit to keep right"
    later = to_patchset(resumed, [], "tiny", None, earlier=kept)
    assert later.remembered == kept.remembered and later.without("e1").remembered == kept.remembered
    # patch sets written before the list: the inputs alone
    for entry in loaded.edits:
        del entry["remembered"]
    older = build_editor(editor.model, tokenizer, EditorConfig(subject_layer=0), MEMORY[:7], patches=loaded)
    assert older.memory.rows_of([negative]) is None and older.memory.rows_of([FACTS[0].input]) is not None
    assert len(build_editor(editor.model, tokenizer, EditorConfig(subject_layer=0), patches=loaded,
                            edits_in_memory=False).edited) == 0                     # a reader: nothing cached


def test_subject_patches_save_load_and_export(tmp_path, tokenizer, make_model):
    model_dir = tmp_path / "model"
    make_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    model, tok = load_model(model_dir)
    editor = Editor(model, tok, EditorConfig(subject_layer=0))
    editor.memory = Memory.from_examples(editor.task, MEMORY)
    outcomes = edit_facts(editor)
    assert sum(o.succeeded for o in outcomes) >= 2
    patches = to_patchset(editor, outcomes, "tiny", model_dir).save(tmp_path / "patches")
    loaded = PatchSet.load(patches)
    assert loaded.neurons.subject_layer == 0 and torch.equal(loaded.neurons.subject_keys, editor.neurons.subject_keys)
    fresh, _, _ = load_patched(model_dir, patches, merge=True)                    # never merged: a branch
    assert fresh._patch_branch is not None
    for f in FACTS[:3]:
        inputs, positions, _, _ = editor.task.encode([Example(f.input, f.target)])
        with torch.no_grad():
            logits = fresh(**inputs).logits[0, positions[0]]
        assert torch.allclose(logits, editor.logits(editor.cache([Example(f.input, f.target)])[0]), atol=1e-5)
    manifest = export(model_dir, patches, tmp_path / "onnx", MEMORY)
    assert manifest["patch_set"]["how"] == "branch in the graph" and manifest["parity"]["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="subject_layer"):
        Editor(model, tok, EditorConfig(), neurons=loaded.neurons)                # a patch set keeps its kind
    # the pipeline's settings per model (params.yaml, then the catalog entry); a patch set's kind wins over them
    from patcher.pipeline.catalog import ModelEntry

    def entry(**editor):
        return ModelEntry("tiny", str(model_dir), "generation", editor=editor)

    settings = TrainSettings.from_dict({"editor": {"phrasings": 0}})
    assert settings.editor_config(entry(subject_layer=1))[0].subject_layer == 1
    assert settings.editor_config(entry(subject_layer=1))[0].phrasings == 0
    assert settings.editor_config(entry())[0].subject_layer is None
    config, notes = settings.editor_config(entry(subject_layer=1), loaded)
    assert config.subject_layer == 0 and "the patch set's own" in notes[0]
    assert TrainSettings.from_dict({}).editor_config(entry(), loaded)[0].subject_layer == 0
    other = "relu" if loaded.neurons.activation != "relu" else "knee"
    config, notes = TrainSettings.from_dict({}).editor_config(entry(activation=other), loaded)
    assert config.activation == loaded.neurons.activation and notes == [
        "subject_layer 0 (the patch set's own; the settings ask for None)",
        f"activation {loaded.neurons.activation} (the patch set's own; the settings ask for {other})"]
    with pytest.raises(ValueError, match="'tiny': unknown editor settings \\['subjet_layer'\\]"):
        entry(subjet_layer=1)
    with pytest.raises(ValueError, match="train.editor: unknown editor settings subjet_layer"):
        TrainSettings.from_dict({"editor": {"subjet_layer": 1}})
    on_top = build_editor(model, tok, EditorConfig(subject_layer=0), MEMORY, patches=loaded)
    # earlier edits' prompts (input and training wording each) join the memory
    assert len(on_top.memory.lengths) == len(MEMORY) + sum(len(e["remembered"]) for e in loaded.edits) == 16
    alone = build_editor(model, tok, EditorConfig(subject_layer=0), patches=loaded)   # no memory examples
    assert len(alone.memory.lengths) == 2 * len(loaded.edits) >= 4
    assert all(alone.memory.rows_of([e["input"]]) is not None for e in loaded.edits)   # the first one named too
    assert on_top.edit("e9", FACTS[3].input, FACTS[3].target).status in ("edited", "skipped")


def test_subject_key_is_refused_where_it_cannot_work(tokenizer, make_model):
    with pytest.raises(ValueError, match="decoder-only"):
        Editor(make_model("bert"), tokenizer, EditorConfig(subject_layer=0))
    editor = subject_editor(make_model, tokenizer)
    with pytest.raises(ValueError, match="fast-path"):
        editor.edit("e0", FACTS[0].input, FACTS[0].target, path="reference")
    assert EditorConfig.parse_overrides(["subject_layer=9"]) == {"subject_layer": 9}
    assert EditorConfig.parse_overrides(["subject_layer=none"]) == {"subject_layer": None}
