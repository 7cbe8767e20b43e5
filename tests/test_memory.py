"""The activation memory: rows appended in place, each prompt's running max, the int8 search finding the top
rows and scoring them exactly, an edit's own rows left out, views of the prompts holding some rows, and the
memory losses against a dense top-k."""
import pytest
import torch
from conftest import FACTS, dense_memory_losses, editor_for

from patcher import EditorConfig, Memory
from patcher.engine.editor import memory_losses
from patcher.engine.examples import Example
from patcher.engine.patch import NewNeurons


def test_memory_appends_in_place_and_keeps_earlier_rows():
    parts = [torch.randn(n, 4) for n in (3, 1, 5, 2, 7)]
    memory, kept = Memory(parts[0]), []
    for part in parts[1:]:
        kept.append(memory.vectors)                       # a caller's view from before this append
        memory.append(part)
    assert torch.equal(memory.vectors, torch.cat(parts)) and len(memory) == 18
    assert all(torch.equal(view, torch.cat(parts)[: len(view)]) for view in kept)
    with pytest.raises(ValueError, match="no subject-layer inputs"):
        memory.append(parts[0], parts[0])


def test_memory_running_max_is_each_prompts_cummax_and_points_back_to_its_row():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (60,), generator=g)
    n = int(lengths.sum())
    memory = Memory(torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g), lengths)
    scores = torch.randn(3, n, generator=g)                                                  # (n, N), by neuron
    expected = torch.cat([s.cummax(1).values for s in scores.split(lengths.tolist(), 1)], 1)  # (3, N)
    assert torch.equal(memory._running_max(scores), expected)
    rows = torch.randint(0, n, (50, 3), generator=g)
    where = memory._argmax_before(scores, rows)
    prompt = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    assert bool((where <= rows).all()) and torch.equal(prompt[where], prompt[rows])
    assert torch.equal(scores.gather(1, where.t()), expected.gather(1, rows.t()))


def test_the_int8_memory_search_finds_the_top_rows_and_scores_them_exactly():
    g = torch.Generator().manual_seed(0)

    def prompts(count):
        lengths = torch.randint(1, 30, (count,), generator=g)
        rows = torch.randn(int(lengths.sum()), 64, generator=g)
        rows[:, 0] *= 30                                     # an outlier dimension, as the last FFN input has
        return rows, torch.randn(len(rows), 64, generator=g), lengths

    memory = Memory(*prompts(700))
    neurons = NewNeurons(torch.randn(2, 64, generator=g), "relu", 1.0, g, z_subject=torch.randn(64, generator=g))
    for extra in range(2):              # the int8 copies are made at the first search, then follow the appends
        assert len(memory) > 8 * 1000
        tops = []
        for search in ("exact", "int8"):
            neurons.zero_grad()
            top = memory.top_preactivation(neurons, 1000, search)                     # (k, n)
            torch.exp(top + 3).mean().backward()
            tops.append((top.detach().sort(0, descending=True).values, [p.grad.clone() for p in
                                                                         (neurons.keys, neurons.subject_keys)]))
        (exact, exact_grads), (found, found_grads) = tops
        assert torch.allclose(found[:100], exact[:100], atol=1e-5)         # the top rows, scored exactly
        assert float((found - exact).abs().max()) < 0.2                    # near the k-th: nearly equal rows swap
        assert torch.exp(found + 3).sum() == pytest.approx(float(torch.exp(exact + 3).sum()), rel=1e-3)
        for grad, expected in zip(found_grads, exact_grads):
            assert float((grad - expected).norm() / expected.norm()) < 0.05     # measured 0.002-0.02
        q, z, lengths = prompts(50)
        for i, (rows_q, rows_z) in enumerate(zip(q.split(lengths.tolist()), z.split(lengths.tolist()))):
            memory.append(rows_q, rows_z)


@pytest.mark.parametrize("search, prompts", [("exact", 20), ("exact", 700), ("int8", 700)])
def test_memory_rows_an_edit_trains_on_are_left_out_of_its_top_k(search, prompts):
    # an earlier edit's negatives can be a later edit's own wordings: that edit must not be held silent on them
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (prompts,), generator=g)
    q, z = torch.randn(int(lengths.sum()), 64, generator=g), torch.randn(int(lengths.sum()), 64, generator=g)
    neurons = NewNeurons(torch.randn(2, 64, generator=g), "relu", 1.0, g, z_subject=torch.randn(64, generator=g))
    key = neurons.keys[0].detach()
    own = [(key / key.norm() ** 2 * 50 + torch.randn(n, 64, generator=g) * 0.01, torch.randn(n, 64, generator=g))
           for n in (5, 7)]                                      # rows the first neuron fires on hardest
    without = Memory(q, z, lengths)
    memory = Memory(q.clone(), z.clone(), lengths.clone())
    for text, (rows_q, rows_z) in zip(["The state capital of X is", "X has its state capital in"], own):
        memory.append(rows_q, rows_z, text)
    memory.append(*own[0], "The state capital of X is")          # the same prompt remembered twice
    skip = memory.rows_of(["The state capital of X is", "X has its state capital in", "never remembered"])
    assert len(skip) == 5 + 7 + 5 and memory.rows_of(["never remembered"]) is None
    kept = memory.top_preactivation(neurons, 1000, search, skip)
    expected = without.top_preactivation(neurons, 1000, search)
    assert kept.shape == expected.shape
    kept, expected = kept.sort(0, descending=True).values, expected.sort(0, descending=True).values
    assert torch.allclose(kept[:100], expected[:100], atol=1e-5)
    assert float((kept - expected).abs().max()) < (1e-5 if search == "exact" else 0.2)   # int8: swaps at the k-th
    assert memory.top_preactivation(neurons, 1000, search).max() > expected.max() + 10   # they would dominate


@pytest.mark.parametrize("subject_layer,neurons", [(None, 2), (0, 2), (0, 1)])
def test_memory_losses_equal_the_dense_top_k_in_value_and_gradient(subject_layer, neurons, tokenizer, make_model):
    # with a subject key (patcher/engine/subject.py) the recomputed rows read z where each prompt's running max was;
    # one neuron's pass over the memory is a product with its key twice (patcher.engine.memory._times)
    editor = editor_for(make_model, tokenizer, "gpt2", subject_layer=subject_layer)
    c = editor.cache([Example(FACTS[0].input, "paris")])[0]
    cfg = EditorConfig(mem_topk=5)
    assert len(editor.memory) > 4 * cfg.mem_topk
    results = []
    fast = lambda cfg, a_edit, memory, new: memory_losses(cfg, a_edit, memory.top_preactivation(new, cfg.mem_topk))  # noqa: E731
    for losses in (fast, dense_memory_losses):
        g = torch.Generator().manual_seed(1)
        new = NewNeurons(c.q[:neurons], "relu", 10.0, torch.Generator().manual_seed(0),    # one per answer token
                         z_subject=None if c.z is None else c.z[3])
        for key in [new.keys] + ([new.subject_keys] if c.z is not None else []):
            key.data += 0.05 * key.data.norm() / key.shape[1] ** 0.5 * torch.randn(key.shape, generator=g)
        a_edit = new.preactivation(c.q[:neurons], c.z, None if c.at is None else c.at[:neurons]).diagonal().unsqueeze(0)
        l_m1, l_m2 = losses(cfg, a_edit, editor.memory, new)
        (l_m1 + l_m2).backward()
        results.append((l_m1.item(), l_m2.item(), [p.grad for p in new.parameters() if p.grad is not None]))
    (m1, m2, grads), (d1, d2, dense) = results
    assert m1 == pytest.approx(d1, rel=1e-5) and m2 == pytest.approx(d2, rel=1e-5)
    assert len(grads) == len(dense) == (2 if subject_layer is None else 3)       # keys, (subject keys), biases
    for grad, expected in zip(grads, dense):
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    assert all(grad.abs().sum() > 0 for grad in grads[:2])


def _prompt_memory(count: int, seed: int = 0) -> Memory:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (count,), generator=g)
    rows = torch.randn(int(lengths.sum()), 64, generator=g)
    rows[:, 0] *= 30
    return Memory(rows, torch.randn(len(rows), 64, generator=g), lengths)


@pytest.mark.parametrize("subject", [True, False])
def test_a_view_of_the_prompts_holding_some_rows_scores_them_as_the_whole_memory(subject):
    memory = _prompt_memory(1400)
    if not subject:
        memory = Memory(memory.vectors)
    g = torch.Generator().manual_seed(1)
    neurons = NewNeurons(torch.randn(2, 64, generator=g), "relu", 1.0, g,
                         z_subject=torch.randn(64, generator=g) if subject else None)
    memory.top_preactivation(neurons, 1000, "int8")                          # makes the int8 copies
    rows = torch.tensor([5, 900, 901, 17000, 3])
    view = memory.holding(rows)
    assert view._places is not None and set(rows.tolist()) <= set(view._places.tolist())
    if subject:         # whole prompts: a row's running max reads the positions before it
        assert int(view.lengths.sum()) == len(view) > len(rows)
    whole = memory.preactivation(neurons).detach()
    assert torch.allclose(view.preactivation(neurons).detach(), whole[view._places], atol=1e-5)
    with pytest.raises(ValueError, match="does not grow"):
        view.append(torch.zeros(1, 64), torch.zeros(1, 64) if subject else None)
    memory.append(torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g) if subject else None)
    copied = memory.holding(rows)                 # the int8 copies are behind the memory now: a copy, not a view
    assert copied._places is None and torch.allclose(copied.preactivation(neurons).detach(), whole[view._places],
                                                     atol=1e-5)


def test_top_rows_between_whole_passes_come_from_the_prompts_of_the_last_pass():
    from patcher.engine.memory import TopRows

    memory = _prompt_memory(1400)
    assert len(memory) > 16 * 1000
    g = torch.Generator().manual_seed(1)
    neurons = NewNeurons(torch.randn(2, 64, generator=g), "relu", 1.0, g, z_subject=torch.randn(64, generator=g))
    top = TopRows(memory, 1000, "int8", every=10)
    passes = []
    memory.holding = (lambda f: lambda *a: passes.append(top.calls) or f(*a))(memory.holding)
    whole = lambda search: memory.top_preactivation(neurons, 1000, search).detach().sort(0).values   # noqa: E731
    for call in range(1, 50):
        found = top(neurons).detach().sort(0).values
        # the keys barely move: the rows a pass over the whole memory would find are in the prompts of the last
        # one, ranked on the same int8 rows and scored exactly
        if call >= TopRows.FULL_CALLS and (call - TopRows.FULL_CALLS) % 10 == 0:    # a pass: 2k rows rescored
            assert float((found[-100:] - whole("exact")[-100:]).abs().max()) < 1e-3, call
        else:
            assert float((found[-100:] - whole("int8")[-100:]).abs().max()) < 1e-5, call
            assert float((found - whole("int8")).abs().max()) < 1e-2, call            # swaps at the k-th
        assert float((found - whole("exact")).abs().max()) < 0.2          # near the k-th: nearly equal rows swap
        with torch.no_grad():
            neurons.keys += 1e-3 * torch.randn(neurons.keys.shape, generator=g)
    assert passes == [25, 35, 45], "a pass at every call at first, then at every 10th, keeping its prompts"
    assert TopRows(_prompt_memory(100), 1000, "int8", every=10).every == 1, "a small memory: a pass every call"


def test_the_highest_columns_found_through_a_sampled_threshold_are_the_top_k():
    from patcher.engine.memory import _highest
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 50_000, generator=g)
    a[1, ::7] = float("-inf")                                 # rows left out of the search
    a[2, ::32] = 100.0 + torch.arange(1563.0)                 # the sample's threshold passes too few: the whole row
    for count in (1000, 2000):
        found = _highest(a, count)                                                     # (count, n)
        assert found.shape == (count, 3)
        assert torch.equal(a.gather(1, found.t()), a.topk(count, dim=1).values), "the same values, highest first"
