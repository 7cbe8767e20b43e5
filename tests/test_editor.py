"""The editor: the fast (cached) path trains the same patch as the reference procedure, edits succeed,
failure is explicit, already-right inputs are not patched again, and rollback removes exactly one edit."""
import pytest
import torch
from conftest import FACTS, MEMORY, editor_for

from patcher import Editor, EditorConfig, PatchBranch, PatchNeurons
from patcher.engine.examples import Example

# distinct last tokens: a tiny random model tells inputs apart mostly by their last token
EDITS = [("the capital of france is", "paris"), ("spain has its capital in", "madrid"),
         ("the city of rome lies in", "italy")]


def wrong_label(editor, text):
    right, _, pred = editor.judge(editor.cache([Example(text, "L0")])[0])
    return "L1" if pred == "L0" else "L0"


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "bart"])
def test_fast_path_equals_reference_procedure(arch, tokenizer, make_model):
    # Same schedule and seed, dropout off: the reference runs the whole model on the edit fed 8 times.
    # float64 so that Adam's sign-like steps on near-zero gradients do not amplify rounding noise.
    # The whole vocabulary in the edit loss: candidate outputs (vocab_candidates) are a fast-path shortcut.
    settings = dict(max_steps=150, reference_dropout=False, edit_copies=8, beta=1.0, vocab_candidates=0)
    results = {}
    for path in ("fast", "reference"):
        editor = editor_for(make_model, tokenizer, arch, torch.float64, **settings)
        text = "the capital of france is"
        target = wrong_label(editor, text) if arch == "bert" else "paris"
        outcome = editor.edit("e1", text, target, path=path)
        results[path] = (outcome, editor.neurons)
    (fast, nf), (ref, nr) = results["fast"], results["reference"]
    assert fast.steps == ref.steps and fast.status == ref.status
    kept = len(nf)
    assert kept == len(nr)
    if kept:
        for name in ("keys", "biases", "values"):
            assert torch.allclose(getattr(nf, name), getattr(nr, name), atol=1e-4), name
    for key in fast.losses:
        assert fast.losses[key] == pytest.approx(ref.losses[key], rel=1e-4, abs=1e-6), key


def test_sequential_edits_succeed_and_er_matches_the_whole_model(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "gpt2")
    outcomes = [editor.edit(f"e{i}", text, target) for i, (text, target) in enumerate(EDITS)]
    assert [o.status for o in outcomes] == ["edited"] * 3                 # SR = 1
    assert all(o.neurons >= 1 and o.lead > 0 and o.steps >= 50 for o in outcomes)   # two checks at least
    assert outcomes[0].prediction_after == "paris"
    assert len(editor.neurons) == sum(o.neurons for o in outcomes) == len(editor.owners)
    # ER from the cache equals ER from the whole model with the patch attached as a branch
    branch = PatchBranch(editor.arch, editor.neurons)
    right = []
    for text, target in EDITS:
        inputs, positions, targets, _ = editor.task.encode([Example(text, target)])
        with torch.no_grad():
            logits = editor.model(**inputs).logits[0, positions[0]]
        right.append(bool((logits.argmax(-1) == targets[0]).all()))
    branch.remove()
    assert editor.accuracy(list(editor.edited.values())) == sum(right) / 3
    assert sum(right) >= 2


def test_memory_grows_with_every_edit_input(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "gpt2")
    before = len(editor.memory)
    editor.edit("e0", FACTS[0].input, "paris")
    c = editor.cache([Example(FACTS[0].input, "paris")])[0]
    assert len(editor.memory) == before + len(c.q_memory)
    assert torch.equal(editor.memory.vectors[before:], c.q_memory)


def test_failed_edit_is_reported_and_not_kept(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "gpt2", max_steps=2)
    outcome = editor.edit("e0", FACTS[0].input, "paris")
    assert outcome.status == "failed" and not outcome.succeeded
    assert outcome.neurons == 0 and len(editor.neurons) == 0
    assert outcome.prediction_after == outcome.prediction_before
    assert "e0" in editor.edited                                          # still counts for ER


def test_failed_edit_kept_only_when_asked(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "gpt2", max_steps=2, keep_failed=True)
    outcome = editor.edit("e0", FACTS[0].input, "paris")
    assert outcome.status == "failed" and outcome.neurons >= 1 and len(editor.neurons) == outcome.neurons


def test_the_lr_floor_keeps_a_collapsing_schedule_training(tokenizer, make_model):
    # a schedule that cuts the LR a hundredfold at the first step without improvement: this ReLU edit stalls
    # unless min_lr holds the LR up (knee neurons make this tiny edit before the loss first stops falling)
    schedule = dict(max_steps=300, plateau_patience=0, plateau_factor=0.01, activation="relu", memory_search="exact")
    stalled = editor_for(make_model, tokenizer, "gpt2", min_lr=0.0, **schedule).edit("e0", FACTS[0].input, "paris")
    held = editor_for(make_model, tokenizer, "gpt2", min_lr=1e-2, **schedule).edit("e0", FACTS[0].input, "paris")
    # stalled: not right within 300 steps, nor in the first retry (no decay); the last (whole vocabulary) may get
    # there at its very end, as float rounding has it
    assert stalled.steps == 3 * 300
    assert held.status == "edited" and held.steps <= 300


def test_max_checks_right_bounds_training_once_the_edit_is_right(tokenizer, make_model):
    # a validation loss that always counts as improving (as without the memory loss on SmolLM2) never stops it
    cfg = dict(beta=0.0, max_steps=400, check_after=25, check_every=25, vocab_candidates=0,
               val_min_improvement=-float("inf"))
    unbounded = editor_for(make_model, tokenizer, "gpt2", **cfg).edit("e0", FACTS[0].input, "paris")
    bounded = editor_for(make_model, tokenizer, "gpt2", max_checks_right=2, **cfg).edit("e0", FACTS[0].input, "paris")
    assert unbounded.succeeded and unbounded.steps == 400
    assert bounded.succeeded and bounded.steps < 400 and bounded.steps % 25 == 0
    # the validation rule stops at the second right check at the earliest (it compares two); one check: right away
    quickest = editor_for(make_model, tokenizer, "gpt2", **{**cfg, "val_min_improvement": 1e9}).edit(
        "e0", FACTS[0].input, "paris")
    once = editor_for(make_model, tokenizer, "gpt2", max_checks_right=1, **cfg).edit("e0", FACTS[0].input, "paris")
    assert bounded.steps == quickest.steps and once.succeeded and once.steps == bounded.steps - 25


def test_an_edit_that_weight_decay_holds_back_is_trained_again_without_it(tokenizer, make_model):
    # a decay strong enough to pin the value scales near 0 (as 0.01 did for SmolLM2's 18-token answer)
    cfg = dict(weight_decay=1e4, max_steps=500, vocab_candidates=0)
    held = editor_for(make_model, tokenizer, "llama", retry_without_decay=False, **cfg).edit("e0", FACTS[0].input, "paris")
    retried = editor_for(make_model, tokenizer, "llama", **cfg).edit("e0", FACTS[0].input, "paris")
    assert held.status == "failed" and held.steps == 500
    assert retried.succeeded and 500 < retried.steps < 1000 and retried.lead > 0
    # with candidate outputs the decay-free retry comes before the (costly) whole-vocabulary one, which the
    # decay would hold back as it held the first training: right within the first retry's 500 steps
    candidates = editor_for(make_model, tokenizer, "llama", **{**cfg, "vocab_candidates": 8}).edit(
        "e0", FACTS[0].input, "paris")
    assert candidates.succeeded and 500 < candidates.steps < 1000


def test_bias_shift_and_value_gain_apply_to_each_new_neuron_unless_the_edit_would_be_wrong(tokenizer, make_model):
    text, target = EDITS[0]
    plain = editor_for(make_model, tokenizer, "llama", vocab_candidates=0)      # one training each: alike
    assert plain.edit("e0", text, target).succeeded
    # a shift that silences the neuron is not kept, nor a gain that flips the answer away
    for shift, gain, kept in ((0.5, 1.0, True), (0.5, 1.25, True), (-1000.0, 1.25, False), (0.0, -1.0, False)):
        shifted = editor_for(make_model, tokenizer, "llama", vocab_candidates=0, bias_shift=shift, value_gain=gain,
                             shift_guard=None)
        assert shifted.edit("e0", text, target).succeeded
        assert torch.equal(shifted.neurons.keys, plain.neurons.keys)
        assert torch.allclose(shifted.neurons.values, plain.neurons.values * (gain if kept else 1.0))
        assert torch.allclose(shifted.neurons.biases - plain.neurons.biases, torch.tensor(shift if kept else 0.0))
    assert EditorConfig.reference().bias_shift == 0.0 and EditorConfig.reference().value_gain == 1.0


def test_the_bias_shift_stops_the_guard_short_of_the_highest_memory_row(tokenizer, make_model):
    text, target = EDITS[0]
    negative = "the capital of italy is"                       # a question the new neurons must stay silent on
    full = editor_for(make_model, tokenizer, "llama", vocab_candidates=0, bias_shift=3.0, shift_guard=None)
    assert full.edit("e0", text, target, negatives=[negative]).succeeded
    assert torch.allclose(full.neurons.shifts, torch.full((len(full.neurons),), 3.0))
    for guard in (0.5, 2.0):
        editor = editor_for(make_model, tokenizer, "llama", vocab_candidates=0, bias_shift=3.0, shift_guard=guard)
        assert editor.edit("e0", text, target, negatives=[negative]).succeeded
        neurons = editor.neurons
        assert torch.equal(neurons.keys, full.neurons.keys)             # the same training; only the shift differs
        assert editor.memory.rows_of([negative]) is not None            # the negative is among the guarded rows
        # every memory row but the edit's own input (remembered after the shift), the negative included
        own = editor.memory.rows_of([text])
        kept = torch.ones(len(editor.memory), dtype=torch.bool)
        kept[own] = False
        unshifted = editor.memory.preactivation(neurons.with_shifts(torch.zeros(len(neurons))))[kept].amax(0)  # (n,)
        assert bool((neurons.shifts < 3.0).all()) and bool((neurons.shifts > 0).all())   # the guard binds, short of 0
        assert torch.allclose(neurons.shifts, (-unshifted - guard).clamp(0.0, 3.0), atol=1e-4)
        assert bool((editor.memory.preactivation(neurons)[kept] <= -guard + 1e-4).all())


def test_a_later_wrong_edit_takes_back_the_shift_of_the_neurons_firing_on_it_only_because_of_it(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "llama", vocab_candidates=0, bias_shift=0.5, shift_guard=None)
    text, target = EDITS[0]
    assert editor.edit("e0", text, target).succeeded
    n = len(editor.neurons)
    assert torch.allclose(editor.neurons.shifts, torch.full((n,), 0.5))
    unshifted = editor.neurons.biases - 0.5
    wordings = editor.cache([Example(t, g) for t, g in [EDITS[1], EDITS[2], (text, target)]])

    def top(neurons, cached):                       # (N,): each neuron's highest pre-activation on the wordings
        return torch.stack([neurons.preactivation(c.q_memory, c.z).amax(0) for c in cached]).amax(0)

    start = editor.neurons
    for cached in (wordings[:2], wordings[2:]):     # other facts' wordings; the edit's own (fires unshifted)
        editor.neurons = start
        taken = editor._take_back_shifts(cached)
        after = editor.neurons
        lowered = after.shifts < start.shifts
        assert taken == int(lowered.sum())
        assert bool((after.shifts >= 0).all()) and torch.allclose(after.biases - after.shifts, unshifted)
        assert bool((top(start, cached)[~lowered] <= 0).all())             # silent ones keep their shift
        # the others lose just enough to be silent, or all of it where they fire without it
        assert bool(((top(after, cached)[lowered] <= 1e-5) | (after.shifts[lowered] == 0)).all())
    assert taken == n and bool((editor.neurons.shifts == 0).all())        # its own wording fires it unshifted
    outcome = editor.edit("e1", *EDITS[1])
    assert outcome.shifts_taken_back == 0 and outcome.to_dict()["shifts_taken_back"] == 0   # nothing left to take
    assert torch.allclose(editor.neurons.shifts, torch.tensor([0.0] * n + [0.5] * outcome.neurons))


def test_already_right_is_recognised_and_not_patched(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "gpt2")
    first = editor.edit("e0", FACTS[0].input, "paris")
    again = editor.edit("e0-again", FACTS[0].input, "paris")               # the same mistake logged again
    assert first.status == "edited" and again.status == "skipped"
    assert again.neurons == 0 and len(editor.neurons) == first.neurons


def test_duplicate_error_id_is_refused(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "gpt2")
    editor.edit("e0", FACTS[0].input, "paris")
    with pytest.raises(ValueError, match="already edited"):
        editor.edit("e0", FACTS[1].input, "madrid")


def test_rollback_removes_one_edit_only(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "gpt2")
    for i, (text, target) in enumerate(EDITS):
        assert editor.edit(f"e{i}", text, target).succeeded
    before = editor.neurons
    kept = torch.tensor([o != "e1" for o in editor.owners])
    removed = editor.remove("e1")
    assert removed == int((~kept).sum()) >= 1 and "e1" not in editor.owners and "e1" not in editor.edited
    for name in ("keys", "biases", "values"):                               # the other neurons, untouched
        assert torch.equal(getattr(editor.neurons, name), getattr(before, name)[kept])
    e1 = editor.cache([Example(*EDITS[1])])[0]
    assert not editor.judge(e1)[0]                                          # e1's mistake is back
    with pytest.raises(KeyError):
        editor.remove("e1")


def test_classification_edit_flips_the_label(tokenizer, make_model):
    # a tiny random BERT maps every input to nearly the same [CLS] vector, so no memory here
    editor = Editor(make_model("bert"), tokenizer, EditorConfig())
    text = "the moon is made of cheese"
    target = wrong_label(editor, text)
    outcome = editor.edit("c0", text, target, rephrases=["the moon consists of cheese"])
    assert outcome.status == "edited" and outcome.prediction_after == target and outcome.neurons == 1
    assert outcome.generalization in (0.0, 1.0)


@pytest.mark.parametrize("arch, ffn", [("llama", "silu"), ("gpt2", "gelu_new"), ("bert", "gelu"), ("bart", "gelu")])
def test_auto_activation_is_knee_unless_the_patch_set_has_another(arch, ffn, tokenizer, make_model):
    assert Editor(make_model(arch), tokenizer).neurons.activation == "knee"
    reference = Editor(make_model(arch), tokenizer, EditorConfig.reference())
    assert reference.neurons.activation == reference.arch.ffn_act_name == ffn
    # an existing patch set (made with the FFN's own activation) is extended with neurons like its own
    h = reference.arch.hidden_size
    earlier = reference.neurons.extend(PatchNeurons(torch.zeros(1, h), torch.zeros(1), torch.zeros(1, h), ffn))
    assert Editor(make_model(arch), tokenizer, neurons=earlier).neurons.activation == ffn
    with pytest.raises(ValueError, match="existing patches use"):
        Editor(make_model(arch), tokenizer, EditorConfig(activation="relu" if ffn != "relu" else "gelu"),
               neurons=earlier)


def test_training_phrasings_fire_the_neuron_and_join_the_memory(tokenizer, make_model):
    text, target = EDITS[0]
    phrasings = ["france has its capital in", "the seat of government of france is"]
    fired = {}
    for n in (0, 2):
        editor = editor_for(make_model, tokenizer, "llama", phrasings=n)
        memory_before = len(editor.memory)
        outcome = editor.edit("e0", text, target, phrasings=phrasings)
        assert outcome.status == "edited" and outcome.prediction_after == target
        cached = editor.cache([Example(p, target) for p in phrasings])
        # memory grows by the edit input and each phrasing trained on (later edits must not fire there)
        grown = sum(len(c.q_memory) for c in editor.cache([Example(text, target)] + [Example(p, target)
                                                                                     for p in phrasings[:n]]))
        assert len(editor.memory) == memory_before + grown
        fired[n] = [editor.judge(c)[0] for c in cached]
    assert fired[2] == [True, True]                 # the phrasings trained on are right too
    with pytest.raises(ValueError, match="fast-path extension"):
        editor_for(make_model, tokenizer, "llama", phrasings=1).edit("e0", text, target, phrasings=phrasings,
                                                                     path="reference")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bart"])
def test_tail_rows_are_the_whole_tail_at_those_outputs(arch, tokenizer, make_model):
    editor = Editor(make_model(arch), tokenizer)
    c = editor.cache([Example("the capital of france is", "paris")])[0]
    rows = torch.tensor([0, 5, 17, editor.arch.model.config.vocab_size - 1])
    assert torch.allclose(editor.arch.tail_rows(c.h, rows), editor.arch.tail(c.h)[..., rows], atol=1e-5)


def test_vocab_candidates_edit_is_judged_on_the_whole_vocabulary(tokenizer, make_model):
    for k in (0, 8):
        editor = editor_for(make_model, tokenizer, "llama", vocab_candidates=k)
        outcomes = [editor.edit(f"e{i}", text, target) for i, (text, target) in enumerate(EDITS)]
        assert [o.status for o in outcomes] == ["edited"] * 3
        # success is the whole model's argmax over the whole vocabulary, whatever the training loss saw
        branch = PatchBranch(editor.arch, editor.neurons)
        try:
            for text, target in EDITS:
                inputs, positions, targets, _ = editor.task.encode([Example(text, target)])
                with torch.no_grad():
                    logits = editor.model(**inputs).logits[0, positions[0]]
                assert torch.equal(logits.argmax(-1), targets[0])
        finally:
            branch.remove()


def test_an_edit_the_candidate_outputs_cannot_fix_is_trained_again_on_the_whole_vocabulary(
        tokenizer, make_model, monkeypatch):
    text, target = EDITS[0]
    plain = editor_for(make_model, tokenizer, "llama", vocab_candidates=0)
    expected = plain.edit("e0", text, target)
    assert expected.status == "edited"
    train, calls = Editor._train, []

    def candidates_fail(self, *args, candidates=None, **kwargs):
        calls.append(self._candidates() if candidates is None else candidates)
        new, positions, steps, losses = train(self, *args, candidates=candidates, **kwargs)
        if calls[-1]:
            new.scales.data.zero_()                     # the patch trained on candidates does nothing
        return new, positions, steps, losses

    monkeypatch.setattr(Editor, "_train", candidates_fail)
    editor = editor_for(make_model, tokenizer, "llama", vocab_candidates=8)
    outcome = editor.edit("e0", text, target)
    # candidates, then the decay-free retry (on candidates too), then the whole vocabulary
    assert calls == [8, 8, 0] and outcome.status == "edited" and outcome.steps > expected.steps
    assert torch.allclose(editor.neurons.values, plain.neurons.values)       # the whole-vocabulary patch


def test_an_answer_with_more_wrong_tokens_than_neurons_fails_at_once_with_the_reason(tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, "llama", max_neurons_per_edit=1)
    text, target = "the capital of france is", "paris madrid rome lima"
    c = editor.cache([Example(text, target)])[0]
    wrong = int((editor.task.leads(editor.logits(c), c.targets) <= 0).sum())
    assert wrong > 1
    outcome = editor.edit("e0", text, target)
    assert outcome.status == "failed" and outcome.steps == 0 and len(editor.neurons) == 0
    assert f"{wrong} answer tokens wrong, at most 1 neurons per edit" in outcome.reason
    assert editor.accuracy([editor.edited["e0"]]) == 0.0                    # counted in ER as a wrong edit


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_examples_are_cached_in_batches_of_like_lengths_and_returned_in_order(arch, tokenizer, make_model):
    editor = editor_for(make_model, tokenizer, arch)
    words = " ".join(m.input for m in MEMORY).split()
    examples = [Example(" ".join(words[i % 7: i % 7 + 1 + (i * 5) % 23]), "L0" if arch == "bert" else f"w{i}")
                for i in range(70)]
    lengths = editor.task.lengths(examples)
    assert len(set(lengths)) > 10 and lengths != sorted(lengths)
    batched = editor.task._compute(examples, batch_size=16)
    for example, cached in zip(examples, batched):
        alone = editor.task._compute([example])[0]
        assert torch.equal(cached.targets, alone.targets) and cached.q_memory.shape == alone.q_memory.shape
        assert torch.allclose(cached.q, alone.q, atol=1e-5) and torch.allclose(cached.h, alone.h, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_judging_many_examples_in_batches_of_rows_equals_judging_each_alone(arch, tokenizer, make_model):
    # a tiny random BERT maps every input to nearly the same [CLS] vector: no memory (as the classification test)
    editor = editor_for(make_model, tokenizer, arch) if arch == "gpt2" else Editor(make_model(arch), tokenizer)
    text, target = EDITS[0]
    editor.edit("e1", text, wrong_label(editor, text) if arch == "bert" else target)
    assert len(editor.neurons)
    targets = ["L0", "L1"] if arch == "bert" else ["paris", "the city of rome", "blue"]
    cached = editor.cache([Example(m.input, targets[i % len(targets)]) for i, m in enumerate(MEMORY + FACTS)])
    alone = []
    for c in cached:                               # each example's own product with the output layer
        with torch.no_grad():
            logits = editor.arch.tail(c.h + editor.neurons(c.q, c.z, c.at))
        leads = editor.task.leads(logits, c.targets)
        alone.append((bool((leads > 0).all()), float(leads.min()), editor.task.decode(logits)))
    for rows in (1, 4, 256):                       # one example per batch, a few, all at once
        batched = editor.judge_all(cached, rows=rows)
        assert [(r, p) for r, _, p in batched] == [(r, p) for r, _, p in alone]
        assert [lead for _, lead, _ in batched] == pytest.approx([lead for _, lead, _ in alone], abs=1e-4)
    assert editor.accuracy(cached) == sum(r for r, _, _ in alone) / len(alone)
    assert editor.predictions(cached) == [p for _, _, p in alone]


