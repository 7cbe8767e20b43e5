"""SR, GR and counts follow the paper's definitions: skipped (already right) records are not edits, failed
edits count against SR, GR averages per edit over edits that have rephrases."""
import pytest
import torch
from conftest import FACTS

from patcher import Editor, EditorConfig, EditOutcome, PatchNeurons
from patcher.engine.metrics import LocalitySet, summarize


class FakeEditor:
    """Only what summarize reads: ER over edited inputs and the neuron count."""

    def __init__(self, er):
        self.edited, self.neurons, self._er = {"a": None, "b": None}, [0] * 5, er

    def accuracy(self, cached):
        return self._er


def outcome(eid, status, gen=None, seconds=1.0, neurons=1):
    return EditOutcome(eid, "x", status, "p", "p2", "t", steps=125, seconds=seconds, neurons=neurons,
                       generalization=gen)


def test_summary_numbers():
    outcomes = [outcome("a", "edited", 1.0, 2.0), outcome("b", "failed", None, 4.0, 0),
                outcome("c", "edited", 0.5, 3.0, 3), outcome("d", "skipped", None, 0.1, 0)]
    m = summarize(FakeEditor(0.5), outcomes)
    assert m["SR"] == pytest.approx(2 / 3)
    assert m["GR"] == pytest.approx(0.75)
    assert m["ER"] == 0.5 and m["TrainR"] is None and m["TestR"] is None
    assert (m["n_records"], m["n_edits"], m["n_failed"], m["n_skipped_already_correct"]) == (4, 3, 1, 1)
    assert m["edit_seconds_median"] == 3.0 and m["neurons_added"] == 4 and m["failed_ids"] == ["b"]


def test_no_edits_gives_nulls():
    m = summarize(FakeEditor(None), [outcome("d", "skipped")])
    assert m["SR"] is None and m["GR"] is None and m["edit_seconds_median"] is None and m["n_edits"] == 0


def test_changed_locality_examples_name_the_edits_whose_neurons_fire_on_them(tokenizer, make_model):
    editor = Editor(make_model("gpt2"), tokenizer, EditorConfig())
    locality = LocalitySet.build(editor, "test", FACTS[1:])
    assert locality.changed(editor) == []
    q = locality.cached[0].q[0]                                            # the first fact's answer position
    value = 100 * torch.randn(q.shape, generator=torch.Generator().manual_seed(0))
    for owner, bias in (("quiet", -5.0), ("loud", 0.0)):                 # pre-activation -4 and 1 there
        editor.neurons = editor.neurons.extend(PatchNeurons((q / q.pow(2).sum()).unsqueeze(0), torch.tensor([bias]),
                                                            value.unsqueeze(0), editor.neurons.activation))
        editor.owners.append(owner)
    changed = locality.changed(editor)
    assert changed and changed[0]["input"] == FACTS[1].input
    for c in changed:
        cached = locality.cached[[e.input for e in locality.examples].index(c["input"])]
        peaks = editor.neurons.preactivation(cached.q).amax(0)             # (2,): quiet, loud
        firing = sorted((p, name) for name, p in zip(["quiet", "loud"], peaks.tolist()) if p > 0)[::-1]
        assert [f["error_id"] for f in c["fired_by"]] == [name for _, name in firing]
    assert changed[0]["fired_by"][0]["preactivation"] == pytest.approx(1.0, abs=1e-3)
