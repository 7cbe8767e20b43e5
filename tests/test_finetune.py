"""The fine-tuning baselines (patcher/engine/finetune.py) on the cached path: exact against the whole model with the
tuned FFN weights loaded, for every architecture; FT-last fixes edits; its KL term keeps locality closer."""
import pytest
import torch
from conftest import FACTS, MEMORY
from test_arch import example_for, whole_model_logits

from patcher import EditorConfig
from patcher.engine.finetune import FineTuneEditor
from patcher.models.tiny import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_tuned_ffn_on_the_cache_equals_the_whole_model_with_those_weights(arch, tokenizer, make_model):
    editor = FineTuneEditor(make_model(arch), tokenizer, EditorConfig())
    example = example_for(arch)
    cached = editor.cache([example])[0]
    assert torch.allclose(editor.logits(cached), whole_model_logits(editor, example), atol=1e-5)  # untouched: 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in editor.delta.tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    tuned = editor.logits(cached).detach()
    editor.delta.original.load_state_dict(editor.delta.tuned.state_dict())     # the model with those weights
    assert torch.allclose(tuned, whole_model_logits(editor, example), atol=1e-4)


@pytest.mark.parametrize("kl_weight", [0.0, 1.0])
def test_sequential_fine_tuning_fixes_edits(kl_weight, tokenizer, make_model):
    model = make_model("llama")
    editor = FineTuneEditor(model, tokenizer, EditorConfig(max_steps=300), lr=1e-2, kl_weight=kl_weight,
                            kl_examples=[c for c in FineTuneEditor(model, tokenizer).cache(MEMORY)])
    outcomes = [editor.edit(f"e{i}", f.input, f.target) for i, f in enumerate(FACTS[:3])]
    attempted = [o for o in outcomes if o.status != "skipped"]
    assert attempted and all(o.succeeded and o.steps >= 1 for o in attempted)
    assert len(editor.neurons) == 0 and editor.judge(editor.edited[attempted[-1].error_id])[0]   # the last holds
    # it stops at the first step at which the edit is right: one step fewer leaves it wrong
    first = attempted[0]
    fact = next(f for f in FACTS if f.input == first.input)
    shorter = FineTuneEditor(make_model("llama"), tokenizer, EditorConfig(max_steps=first.steps - 1), lr=1e-2,
                             kl_weight=kl_weight, kl_examples=editor.kl_examples)
    again = shorter.edit("again", fact.input, fact.target)
    assert again.status == "failed" and again.steps == first.steps - 1


def test_kl_term_keeps_locality_closer(tokenizer, make_model):
    model = make_model("llama")
    probe = FineTuneEditor(model, tokenizer)
    locality = probe.cache(MEMORY)

    def moved(kl_weight):
        editor = FineTuneEditor(make_model("llama"), tokenizer, EditorConfig(max_steps=300), lr=1e-2,
                                kl_weight=kl_weight, kl_examples=locality)
        for i, f in enumerate(FACTS):
            editor.edit(f"e{i}", f.input, f.target)
        with torch.no_grad():
            before = torch.cat([editor.logits(c, probe.neurons) for c in locality]).log_softmax(-1)
            after = torch.cat([editor.logits(c) for c in locality]).log_softmax(-1)
        return torch.nn.functional.kl_div(after, before, log_target=True, reduction="batchmean").item()

    assert moved(10.0) < moved(0.0)
