"""The on-disk activation cache: a large example set is computed once per model, read back identical, and
a different model (other weights) or a changed example set never reads another's activations."""
import os
import time

import pytest
import torch

from patcher import Editor
from patcher.engine.activations import MIN_EXAMPLES
from patcher.engine.examples import Example


def files(root):
    return sorted(p.name for p in (root / "activations").glob("*.safetensors")) if (root / "activations").exists() else []


def test_computed_once_read_back_identical_and_keyed_by_model(tmp_path, monkeypatch, tokenizer, make_model):
    monkeypatch.setenv("PATCHER_CACHE", str(tmp_path))
    examples = [Example(f"the number {i} is", "paris") for i in range(MIN_EXAMPLES)]
    task = Editor(make_model("llama"), tokenizer).task
    first = task.cache(examples)
    assert len(files(tmp_path)) == 1
    again = Editor(make_model("llama"), tokenizer).task.cache(examples)     # a new process would do the same
    assert len(files(tmp_path)) == 1 and len(again) == len(first)
    for a, b in zip(first, again):
        for name in ("q", "h", "targets", "q_memory"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name

    other = make_model("llama")
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(1.5)               # other weights: another fingerprint
    changed = Editor(other, tokenizer).task.cache(examples)
    assert len(files(tmp_path)) == 2
    assert not torch.allclose(changed[0].q, first[0].q)
    task.cache(examples[:-1] + [Example("another one", "paris")])           # other examples: another entry
    assert len(files(tmp_path)) == 3
    task.cache(examples[:10])                                               # small sets are not stored
    assert len(files(tmp_path)) == 3


def test_off_switch(tmp_path, monkeypatch, tokenizer, make_model):
    monkeypatch.setenv("PATCHER_CACHE", str(tmp_path))
    monkeypatch.setenv("PATCHER_ACTIVATION_CACHE", "off")
    Editor(make_model("gpt2"), tokenizer).task.cache([Example(f"item {i}", "x") for i in range(MIN_EXAMPLES)])
    assert files(tmp_path) == []


def test_least_recently_used_entries_are_evicted_over_the_budget(tmp_path, monkeypatch, tokenizer, make_model):
    monkeypatch.setenv("PATCHER_CACHE", str(tmp_path))
    folder = tmp_path / "activations"
    task = Editor(make_model("llama"), tokenizer).task
    sets = [[Example(f"set {s} number {i} is", "paris") for i in range(MIN_EXAMPLES)] for s in range(3)]
    task.cache(sets[0])
    (entry_0,) = folder.glob("*.safetensors")
    monkeypatch.setenv("PATCHER_ACTIVATION_CACHE_MB", str(2.5 * entry_0.stat().st_size / 2**20))  # room for two
    os.utime(entry_0, (time.time() - 100, time.time() - 100))
    task.cache(sets[1])
    (entry_1,) = set(folder.glob("*.safetensors")) - {entry_0}
    os.utime(entry_1, (time.time() - 50, time.time() - 50))
    task.cache(sets[0])                          # a read: set 0 becomes the most recently used
    task.cache(sets[2])                          # a third entry: the least recently used one (set 1) goes
    kept = set(folder.glob("*.safetensors"))
    assert len(kept) == 2 and entry_0 in kept and entry_1 not in kept


def test_a_budget_that_is_not_a_number_is_named(monkeypatch):
    from patcher.engine import activations

    monkeypatch.setenv("PATCHER_ACTIVATION_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="PATCHER_ACTIVATION_CACHE_MB"):
        activations.budget_bytes()


def test_a_shared_cache_runs_each_prompt_once_for_every_editor(tokenizer, make_model):
    from patcher import EditorConfig
    from patcher.engine.examples import SharedCache

    model, shared = make_model("llama"), SharedCache()
    subject, plain, other = (Editor(model, tokenizer, EditorConfig(subject_layer=layer)).task for layer in (0, None, 1))
    for task in (subject, plain, other):
        task.shared = shared
    prompts = [Example("the capital of france is", "paris"), Example("the capital of peru is", "lima")]
    first = subject.cache(prompts)
    calls = []
    for task in (plain, other):
        compute = task._compute
        task._compute = lambda examples, *a, compute=compute: calls.append(len(examples)) or compute(examples, *a)
    again, stripped = subject.cache(prompts[::-1]), plain.cache(prompts + [Example("numbers go up", "yes")])
    assert calls == [1]                                     # the plain task computed its one new prompt only
    assert again[0] is first[1] and again[1] is first[0]
    assert stripped[0].z is None and stripped[0].at is None and torch.equal(stripped[0].q, first[0].q)
    alone = Editor(model, tokenizer).task.cache(prompts[:1])[0]          # what the plain task computes itself
    assert torch.allclose(stripped[0].h, alone.h, atol=1e-6) and torch.allclose(stripped[0].q_memory, alone.q_memory, atol=1e-6)
    own = other.cache(prompts)                              # another subject layer: its own z
    assert calls == [1, 2] and not torch.allclose(own[0].z, first[0].z)
    assert subject.cache(prompts)[0] is first[0]            # the entry with z was not replaced by one without
    assert len(shared) == 3


def test_a_large_set_another_editor_shared_is_read_from_the_shared_cache_without_running_the_model(
        tmp_path, monkeypatch, tokenizer, make_model):
    # the benchmark's --jobs workers read the memories their parent computed (and so never raise their threads)
    from patcher import EditorConfig
    from patcher.engine.examples import SharedCache

    monkeypatch.setenv("PATCHER_CACHE", str(tmp_path))
    model, shared = make_model("llama"), SharedCache()
    examples = [Example(f"the number {i} is", "paris") for i in range(MIN_EXAMPLES)]
    parent = Editor(model, tokenizer, EditorConfig(subject_layer=0)).task
    for example, cached in zip(examples, parent.cache(examples)):
        shared.put(example, 0, cached)
    worker = Editor(model, tokenizer).task                       # no subject key: the entries without z
    worker.shared = shared
    monkeypatch.setattr(worker, "_compute", lambda *a, **k: pytest.fail("the model ran"))
    read = worker.cache(examples)
    assert all(c.z is None for c in read)
    assert all(torch.equal(a.q, b.q) for a, b in zip(read, parent.cache(examples)))
    with pytest.raises(pytest.fail.Exception):               # a set not all shared is computed (or read from disk)
        worker.cache(examples[:-1] + [Example("another one", "paris")])
