"""Merging patch neurons into the FFN weights is exact where the activation matches and biases exist, and
refused (the branch remains) where it is not: SwiGLU, or a different activation."""
import pytest
import torch
from conftest import FACTS

from patcher import Editor, PatchBranch, PatchNeurons, merge_into
from patcher.engine.arch import adapter_for
from patcher.engine.examples import Example
from patcher.engine.patch import activation_fn


def random_neurons(arch, n=4, activation=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = arch.hidden_size
    return PatchNeurons(torch.randn(n, h, generator=g), torch.randn(n, generator=g),
                        torch.randn(n, h, generator=g) * 0.5, activation or arch.ffn_act_name)


def logits(model, tokenizer, arch_name):
    editor_inputs = Editor(model, tokenizer).task.encode(
        [Example("a claim to check", "L0") if arch_name == "bert" else FACTS[1]])[0]
    with torch.no_grad():
        return model(**editor_inputs).logits


@pytest.mark.parametrize("arch_name", ["bert", "gpt2", "bart"])
def test_merge_equals_branch(arch_name, tokenizer, make_model):
    branched, merged = make_model(arch_name), make_model(arch_name)
    neurons = random_neurons(adapter_for(branched))
    PatchBranch(adapter_for(branched), neurons)
    arch = adapter_for(merged)
    width = arch.ffn_weights()[0].shape[0]
    merge_into(arch, neurons)
    assert arch.ffn_weights()[0].shape[0] == width + 4, "one FFN row per neuron"
    assert torch.allclose(logits(branched, tokenizer, arch_name), logits(merged, tokenizer, arch_name), atol=1e-5)


def test_merge_refused_for_swiglu(make_model):
    arch = adapter_for(make_model("llama"))
    with pytest.raises(ValueError, match="cannot be merged exactly"):
        merge_into(arch, random_neurons(arch))


def test_merge_refused_for_other_activation(make_model):
    arch = adapter_for(make_model("gpt2"))
    with pytest.raises(ValueError, match="relu"):
        merge_into(arch, random_neurons(arch, activation="relu"))


def test_select_and_extend_keep_neurons_independent(make_model):
    arch = adapter_for(make_model("gpt2"))
    a, b = random_neurons(arch, 2, seed=1), random_neurons(arch, 3, seed=2)
    both = a.extend(b)
    q = torch.randn(5, arch.hidden_size)
    assert torch.allclose(both(q), a(q) + b(q), atol=1e-5)
    assert torch.allclose(both.select(torch.tensor([2, 3, 4]))(q), b(q), atol=1e-6)


def test_knee_is_relu_up_to_one_then_a_tenth():
    a = torch.tensor([-2.0, 0.0, 0.3, 1.0, 3.0])
    assert torch.allclose(activation_fn("knee")(a), torch.tensor([0.0, 0.0, 0.3, 1.0, 1.2]))
    assert torch.equal(activation_fn("relu")(a), torch.relu(a))
