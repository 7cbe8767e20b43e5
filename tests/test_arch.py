"""The cache is exact: tail(h + patch(q)) at the judged positions equals the whole model's logits, with and
without patch neurons attached, for every architecture."""
import pytest
import torch
from conftest import FACTS

from patcher import Editor, EditorConfig, PatchBranch, PatchNeurons
from patcher.engine.cpu.output_layer import OutputLayer
from patcher.engine.examples import Example
from patcher.models.tiny import ARCHS


def whole_model_logits(editor, example):
    inputs, positions, _, _ = editor.task.encode([example])
    with torch.no_grad():
        out = editor.model(**inputs).logits
    return out[0] if out.dim() == 2 else out[0, positions[0]]          # (P, V)


def example_for(arch):
    return Example("is this claim true or not", "L1") if arch == "bert" else FACTS[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_logits_equal_whole_model(arch, tokenizer, make_model):
    editor = Editor(make_model(arch), tokenizer, EditorConfig())
    example = example_for(arch)
    cached = editor.cache([example])[0]
    assert torch.allclose(editor.logits(cached), whole_model_logits(editor, example), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_cache_equals_whole_model_with_branch(arch, tokenizer, make_model):
    editor = Editor(make_model(arch), tokenizer, EditorConfig())
    g = torch.Generator().manual_seed(1)
    h = editor.arch.hidden_size
    neurons = PatchNeurons(torch.randn(3, h, generator=g), torch.randn(3, generator=g),
                           torch.randn(3, h, generator=g), editor.neurons.activation)
    example = example_for(arch)
    cached = editor.cache([example])[0]
    plain = whole_model_logits(editor, example)
    branch = PatchBranch(editor.arch, neurons)
    patched = whole_model_logits(editor, example)
    branch.remove()
    assert not torch.allclose(plain, patched, atol=1e-3), "the neurons must change the output"
    assert torch.allclose(editor.logits(cached, neurons), patched, atol=1e-5)
    assert torch.equal(whole_model_logits(editor, example), plain), "removing the branch restores the model"


def test_unsupported_architecture_is_named(tokenizer):
    with pytest.raises(ValueError, match="unsupported architecture Linear"):
        Editor(torch.nn.Linear(2, 2), tokenizer)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 12])
def test_output_layer_is_the_plain_product_in_value_and_gradient_whatever_its_orientation(rows, threads):
    # 1 row (by threads), 2-7 rows and from 8 rows on (oneDNN) each take their own orientation
    x, weight, expected = _output_layer_case(rows)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = OutputLayer(weight)(x)
    finally:
        torch.set_num_threads(before)
    out.pow(2).sum().backward()
    assert out.shape == (rows, 300)
    assert torch.allclose(out, expected @ weight.t(), atol=1e-5)
    assert torch.allclose(x.grad, expected.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 3, 12])
def test_output_layer_int8_gradient_is_close_and_its_forward_exact(rows):
    x, weight, expected = _output_layer_case(rows)
    out = OutputLayer(weight, grad="int8")(x)
    out.pow(2).sum().backward()
    assert torch.allclose(out, expected @ weight.t(), atol=1e-5), "the forward stays exact"
    error = (x.grad - expected.grad).norm(dim=-1) / expected.grad.norm(dim=-1)
    assert error.max() < 0.02, error
    assert not torch.equal(x.grad, expected.grad), "the int8 path was taken"


def test_output_layer_refuses_an_unknown_gradient_mode():
    with pytest.raises(ValueError, match="unknown output_grad 'fp8'"):
        OutputLayer(torch.zeros(3, 2), grad="fp8")


def _output_layer_case(rows: int):
    """-> (x (rows, 16) requiring grad, W (300, 16), a copy of x whose .grad is the exact gradient of
    sum((x @ W.t())^2))."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 16, generator=g)
    x = torch.randn(rows, 3, 16, generator=g)[:, 0].requires_grad_(True)      # a strided view, as cached rows are
    expected = x.detach().clone().requires_grad_(True)
    (expected @ weight.t()).pow(2).sum().backward()
    return x, weight, expected
