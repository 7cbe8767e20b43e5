"""The GPU path (EditorConfig.device='cuda'): a patch trained on CUDA is the patch trained on the CPU, and it
saves, loads onto a CPU model and exports to ONNX like any other. Skipped where torch sees no CUDA device
(CI has none); run on a GPU worker: `python -m pytest tests/test_cuda.py`."""
import pytest
import torch
from conftest import FACTS, MEMORY

from patcher import Editor, EditorConfig, Memory
from patcher.engine.examples import Example
from patcher.engine.patchset import load_patched
from patcher.engine.sequential import to_patchset
from patcher.models.base import load_model
from patcher.serving.export import export

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def edited(make_model, tokenizer, arch, device, **cfg):
    """Two sequential edits of a tiny float64 model (the classifier: each claim's other label)."""
    model = make_model(arch).to(torch.float64)
    editor = Editor(model, tokenizer, EditorConfig(device=device, **cfg))
    memory = [Example(m.input, "L0") for m in MEMORY] if arch == "bert" else MEMORY
    editor.memory = Memory.from_examples(editor.task, memory[:7])
    editor.val_memory = Memory.from_examples(editor.task, memory[7:])
    outcomes = []
    for i, f in enumerate(FACTS[:2]):
        target = f.target
        if arch == "bert":
            target = "L1" if editor.judge(editor.cache([Example(f.input, "L0")])[0])[2] == "L0" else "L0"
        outcomes.append(editor.edit(f"e{i}", f.input, target))
    return editor, outcomes


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "bart"])
def test_a_patch_trained_on_cuda_is_the_patch_trained_on_the_cpu(arch, tokenizer, make_model):
    # float64 on both devices, so that Adam's sign-like steps on near-zero gradients do not amplify the
    # devices' different summation orders; the whole vocabulary in the edit loss on both.
    # keep_failed: an edit not right within the 150 steps is compared too.
    runs = {device: edited(make_model, tokenizer, arch, device, max_steps=150, beta=1.0, keep_failed=True)
            for device in ("cpu", "cuda")}
    (cpu, cpu_out), (gpu, gpu_out) = runs["cpu"], runs["cuda"]
    assert gpu.neurons.keys.device.type == "cuda" and gpu.memory.vectors.device.type == "cuda"
    assert [(o.status, o.steps, o.neurons) for o in gpu_out] == [(o.status, o.steps, o.neurons) for o in cpu_out]
    assert len(gpu.neurons) >= 2
    for name in ("keys", "biases", "values"):
        assert torch.allclose(getattr(gpu.neurons, name).cpu(), getattr(cpu.neurons, name), atol=1e-4), name


def test_cuda_patches_load_onto_a_cpu_model_and_export(tmp_path, tokenizer, make_model):
    model_dir = tmp_path / "model"
    make_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    model, tok = load_model(model_dir)
    editor = Editor(model, tok, EditorConfig(device="cuda"))
    editor.memory = Memory.from_examples(editor.task, MEMORY)
    outcomes = [editor.edit(f"e{i}", f.input, f.target) for i, f in enumerate(FACTS[:3])]
    assert all(o.succeeded for o in outcomes)
    patches = to_patchset(editor, outcomes, "tiny", model_dir).save(tmp_path / "patches")

    cpu_model, _, _ = load_patched(model_dir, patches)
    for f in FACTS[:3]:
        inputs, positions, _, _ = editor.task.encode([Example(f.input, f.target)])
        with torch.no_grad():
            logits = cpu_model(**inputs).logits[0, positions[0]]
        cached = editor.cache([Example(f.input, f.target)])[0]
        assert torch.allclose(logits, editor.logits(cached).cpu(), atol=1e-4)
        assert tok.decode(logits.argmax(-1)).strip() == editor.judge(cached)[2]
    assert tok.decode(logits.argmax(-1)).strip() == FACTS[2].target          # the last edit holds for sure
    manifest = export(model_dir, patches, tmp_path / "onnx", MEMORY)
    assert manifest["patch_set"]["edits"] == 3 and manifest["parity"]["max_abs_diff"] <= 1e-4
