"""The editor on the two real pretrained models: SmolLM2-135M's real factual mistakes are fixed and show
up in real greedy generation; MiniLM classification edits flip the label and leave other claims alone."""
import pytest
import torch

from patcher import Editor, EditorConfig, Memory, PatchBranch
from patcher.engine.examples import Example
from patcher.engine.metrics import LocalitySet
from patcher.engine.sequential import build_editor, run_stream
from patcher.facts import all_facts, split_facts
from patcher.facts.mistakes import examples, find_mistakes, greedy_answer
from patcher.models.base import load_model, minilm_dir

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


def test_smollm2_real_mistakes_are_fixed_in_generation(smollm2):
    model, tokenizer = smollm2
    torch.set_num_threads(2)
    split = split_facts(all_facts(), seed=0)
    editor = build_editor(model, tokenizer, EditorConfig(threads=2), examples(split["train"][:60], "all"),
                          examples(split["validation"][:20], "all"))
    test = LocalitySet.build(editor, "test", examples(split["test"][:40]))
    records = find_mistakes(editor, split["edit"], "smollm2", limit=3)
    assert len(records) == 3
    for r in records:                                  # real mistakes: the model's own output is not the answer
        assert r.prediction != r.target and r.rephrases
    outcomes = run_stream(editor, records, progress=False)
    assert [o.status for o in outcomes] == ["edited"] * 3
    assert editor.accuracy(list(editor.edited.values())) == 1.0
    assert test.ratio(editor) >= 0.9 and len(test.changed(editor)) <= 2
    branch = PatchBranch(editor.arch, editor.neurons)  # the real model, patched, generating greedily
    try:
        for r in records:
            n_tokens = len(editor.task.answer_ids(r.target))
            assert greedy_answer(editor, r.input, n_tokens) == r.target
    finally:
        branch.remove()
    torch.set_num_threads(1)


def test_minilm_classification_edit():
    import transformers as tf

    torch.manual_seed(0)
    labels = {0: "SUPPORTED", 1: "REFUTED"}
    model = tf.AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir())
    facts = [f for f in all_facts() if f.relation == "capital"]
    claims = [Example(f"The capital of {f.subject} is {f.answer}.", "SUPPORTED") for f in facts]
    editor = Editor(model, tokenizer, EditorConfig(threads=1))
    editor.memory = Memory.from_examples(editor.task, claims[:120])
    editor.val_memory = Memory.from_examples(editor.task, claims[120:160])
    locality = LocalitySet.build(editor, "test", claims[160:220])
    outcomes = []
    for i, claim in enumerate(claims[220:225]):
        wrong = "REFUTED" if editor.judge(editor.cache([claim])[0])[2] == "SUPPORTED" else "SUPPORTED"
        outcomes.append(editor.edit(f"c{i}", claim.input, wrong))
    assert all(o.status in ("edited", "skipped") for o in outcomes)
    assert sum(o.status == "edited" for o in outcomes) >= 3
    assert editor.accuracy(list(editor.edited.values())) == 1.0
    assert len(locality.changed(editor)) <= 3           # 60 unrelated claims keep their label
