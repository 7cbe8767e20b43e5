"""The activation memory: FFN inputs q of inputs a new patch must NOT fire on.

It decides locality, so it is built from the task's own distribution (the training split of the model's
task) and grows with every edit input the editor sees (patched or already right), so a later patch cannot
fire on an earlier edit. A separate validation memory (from the validation split) decides early stopping.
With a subject key (patcher/engine/subject.py) it also keeps the subject layer's input z at the same positions, prompt
by prompt, since a neuron's pre-activation at a position depends on the positions before it.
"""
from __future__ import annotations

import torch

from .cpu.int8 import Int8Rows, room
from .cpu.output_layer import matrix_times
from .examples import Cached, Example
from .tasks import Task


class Memory:
    """A growing (N, H) matrix of FFN inputs; with a subject key also z (N, H) and the number of positions of
    each prompt, in order (S,)."""

    def __init__(self, vectors: torch.Tensor, z: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                 places: torch.Tensor | None = None):
        self._q, self._z = vectors, z                # buffers (capacity, H): rows past _n are free
        self._places = places                        # a view's rows in those buffers (R,) (Memory.holding)
        self._n = len(vectors) if places is None else len(places)
        self.lengths = lengths                       # (S,) or None
        self._layout_cache = None
        self._outside: list[tuple[int, torch.Tensor]] | None = None   # the running max's masks (_steps_back)
        self._int8: dict[str, Int8Rows] = {}         # int8 copies of vectors ("q") and z, for search="int8"
        self.spans: dict[str, list[tuple[int, int]]] = {}   # text -> its rows [start, end), for appends that name it

    @property
    def vectors(self) -> torch.Tensor:
        return self._rows("q")                       # (N, H)

    @property
    def z(self) -> torch.Tensor | None:
        return None if self._z is None else self._rows("z")      # (N, H)

    def _rows(self, which: str) -> torch.Tensor:
        buffer = self._q if which == "q" else self._z
        return buffer[: self._n] if self._places is None else buffer[self._places]

    def _place(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of this memory -> their rows in the buffers."""
        return rows if self._places is None else self._places[rows]

    @classmethod
    def from_examples(cls, task: Task, examples: list[Example], max_vectors: int | None = None,
                      seed: int = 0) -> "Memory":
        return cls.from_cached(task.cache(examples), max_vectors, seed)

    @classmethod
    def from_cached(cls, cached: list[Cached], max_vectors: int | None = None, seed: int = 0) -> "Memory":
        """At most max_vectors vectors, sampled with the seed: single positions, or (with a subject key) whole
        prompts, whose running max needs every position."""
        if not cached:
            raise ValueError("a memory needs at least one example")
        g = torch.Generator().manual_seed(seed)
        if cached[0].z is not None:
            if max_vectors is not None and sum(len(c.q_memory) for c in cached) > max_vectors:
                order, kept, total = torch.randperm(len(cached), generator=g).tolist(), [], 0
                for i in order:
                    if total + len(cached[i].q_memory) > max_vectors:
                        break
                    kept.append(cached[i])
                    total += len(cached[i].q_memory)
                cached = kept
            return cls(torch.cat([c.q_memory for c in cached]), torch.cat([c.z for c in cached]),
                       torch.tensor([len(c.q_memory) for c in cached], device=cached[0].q.device))
        vectors = torch.cat([c.q_memory for c in cached])
        if max_vectors is not None and len(vectors) > max_vectors:
            vectors = vectors[torch.randperm(len(vectors), generator=g)[:max_vectors].to(vectors.device)]
        return cls(vectors)

    @classmethod
    def empty(cls, like: Cached) -> "Memory":
        """A memory with no rows yet, for vectors like `like`'s (and its subject-layer inputs, if it has them)."""
        rows = like.q_memory.new_empty((0, like.q_memory.shape[-1]))
        if like.z is None:
            return cls(rows)
        return cls(rows, rows.clone(), torch.empty(0, dtype=torch.long, device=rows.device))

    def __len__(self) -> int:
        return self._n

    def append(self, q: torch.Tensor, z: torch.Tensor | None = None, text: str | None = None) -> None:
        """One more prompt's FFN inputs (and, with a subject key, its z at the same positions); `text`, the
        prompt, lets a later edit that trains on the same prompt leave its rows out (rows_of). The buffers
        grow by doubling: an edit appends ~20 prompts, and copying a 40k-row memory for each cost ~1 s an edit.
        Rows already there never change (a caller may keep `vectors` from before)."""
        if self._places is not None:
            raise ValueError("a view of a memory (Memory.holding) does not grow")
        if (z is None) != (self._z is None):
            raise ValueError("this memory " + ("keeps" if self._z is not None else "has no") + " subject-layer inputs")
        end = self._n + len(q)
        self._q = room(self._q, self._n, end)
        self._q[self._n:end] = q
        if z is not None:
            self._z = room(self._z, self._n, end)
            self._z[self._n:end] = z
            self.lengths = torch.cat([self.lengths, self.lengths.new_tensor([len(q)])])
        if text is not None:
            self.spans.setdefault(text, []).append((self._n, end))
        self._n = end

    def rows_of(self, texts) -> torch.Tensor | None:
        """(R,) the indices of the rows appended under any of `texts`; None when there are none."""
        spans = {span for t in texts for span in self.spans.get(t, [])}
        if not spans:
            return None
        return torch.cat([torch.arange(start, end, device=self._q.device) for start, end in sorted(spans)])

    def to(self, device) -> "Memory":
        move = lambda t: None if t is None else t.to(device)                       # noqa: E731
        moved = Memory(self.vectors.to(device), move(self.z), move(self.lengths))
        moved.spans = {t: list(s) for t, s in self.spans.items()}
        return moved

    # --- pre-activations of (new) neurons over the memory ------------------------------------------------
    def preactivation(self, neurons) -> torch.Tensor:
        """(N, n): every memory position's pre-activation of `neurons` (keys, biases, subject_keys)."""
        return self._scores(neurons, self._times)[0].t()

    def _scores(self, neurons, times) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row's pre-activation (n, N) through `times` (_times or _int8_times), and with a subject key the
        z scores before their running max (n, N), else None."""
        a = times("q", neurons.keys) + neurons.biases.unsqueeze(1)                        # (n, N)
        if self._z is None:
            return a, None
        scores = times("z", neurons.subject_keys)                                        # (n, N)
        return a + self._running_max(scores), scores

    def top_preactivation(self, neurons, k: int, search: str = "exact",
                          skip: torch.Tensor | None = None) -> torch.Tensor:
        """(k, n): each neuron's k highest memory pre-activations, leaving out the rows `skip` (R,) (all the
        others when they are no more than k). Only they carry a gradient, so they are found
        without autograd and only their rows are recomputed with it (for the subject part, the row where the
        running max was attained): the dense top-k's value and gradient in one pass over the memory.
        search "int8" (on a CPU, over 8k rows; else exact): the pass reads an int8 copy of the memory, 4x fewer
        bytes (it is bound by memory bandwidth), and the rows it ranks highest are scored exactly. It can swap
        rows of nearly equal value at the k-th place, and read a prompt's running max at a position that nearly
        ties with the max: on SmolLM2's memory after 236 edits (98k rows) the top 1000 of trained neurons were
        off by at most 0.12 at the k-th place (a value of -7 to -9) and the memory loss by under 1e-6."""
        return self.top_rows(neurons, k, search, skip)[0]

    def top_rows(self, neurons, k: int, search: str = "exact", skip: torch.Tensor | None = None,
                 more: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """top_preactivation and the rows it found, (k, n) and (k + more, n): the search's next `more` rows per
        neuron too, not scored (rows None: the dense pass, every row)."""
        if len(self) - (0 if skip is None else len(skip)) <= k:                  # the dense pass
            a = self.preactivation(neurons)
            if skip is None:
                return a, None
            kept = torch.ones(len(self), dtype=torch.bool, device=a.device)
            kept[skip] = False
            return a[kept], None
        approximate = search == "int8" and self._q.device.type == "cpu" and (
            len(self) > 8 * k or "q" in self._int8 and self._places is not None)
        with torch.no_grad():    # by neuron, (n, N): each neuron's scores contiguous for the running max and top-k
            a, scores = self._scores(neurons, self._int8_times if approximate else self._times)   # (n, N)
            if skip is not None:
                a.index_fill_(1, skip, float("-inf"))
            found = _highest(a, min(k + more, a.shape[1]))                                  # (k + more, n)
            rows = found[:k]                                                                # (k, n) the top k
        top = _rows_times(self._q, self._place(rows), neurons.keys) + neurons.biases
        if self._z is not None:
            top = top + _rows_times(self._z, self._place(self._argmax_before(scores, rows)), neurons.subject_keys)
        return top, found

    def holding(self, rows: torch.Tensor) -> "Memory":
        """A memory of the given rows (R,), in order; with a subject key, of the whole prompts that hold them,
        since a row's pre-activation reads the prompt's positions before it. Where this memory has int8 copies
        (up to date) the result is a view: their rows, and its places in this memory's buffers (nothing else
        copied); otherwise a copy."""
        rows = torch.unique(rows)
        lengths = None
        if self._z is not None:
            ends = self.lengths.cumsum(0)                                              # (S,)
            prompts = torch.unique(torch.searchsorted(ends, rows, right=True))         # (S',)
            lengths = self.lengths[prompts]
            cols, _ = _prompt_layout(lengths)
            rows = (ends - self.lengths)[prompts].repeat_interleave(lengths) + cols     # (R',)
        places = self._place(rows)
        if not self._int8 or any(len(copy) != len(self) for copy in self._int8.values()):   # none, or behind
            return Memory(self._q[places], None if self._z is None else self._z[places], lengths)
        view = Memory(self._q, self._z, lengths, places)
        view._int8 = {which: copy.select(rows) for which, copy in self._int8.items()}
        return view

    def _times(self, which: str, keys: torch.Tensor) -> torch.Tensor:
        """keys (n, H) -> keys @ vectors.t() ("q") or keys @ z.t() ("z"), (n, N)."""
        return matrix_times(self._rows(which), keys).t()

    def _int8_times(self, which: str, keys: torch.Tensor) -> torch.Tensor:
        """Approximately _times, (n, N), from int8 copies kept up to date with the memory."""
        copy = self._int8.get(which)
        if copy is None:
            copy = self._int8[which] = Int8Rows(self._rows(which), unique=True, packed=True)
        elif len(copy) < len(self):
            buffer = self._q if which == "q" else self._z
            copy.append(buffer[len(copy): self._n])
        return copy.times(keys)

    def _layout(self):
        """Each position's index in its prompt (N,), its prompt's first row (N,) and the longest prompt; kept
        until the memory grows."""
        if self._layout_cache is None or len(self._layout_cache[0]) != len(self):
            self._layout_cache = (*_prompt_layout(self.lengths), int(self.lengths.max()))
            self._outside = None
        return self._layout_cache

    def _steps_back(self) -> list[tuple[int, torch.Tensor]]:
        """The running max's rounds: (step, (N - step,) 0 where the row `step` back is in the same prompt, -inf
        where not), kept until the memory grows (adding the mask reads a tenth of the time of masking)."""
        cols, _, longest = self._layout()
        if self._outside is None:
            steps = [2 ** i for i in range(max(longest - 1, 0).bit_length())]
            self._outside = [(step, torch.zeros(len(cols) - step, device=cols.device).masked_fill_(
                cols[step:] < step, float("-inf"))) for step in steps]
        return self._outside

    def _running_max(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (n, N) -> the max over each row's prompt up to it (n, N), by doubling: after the round with
        step s, a row holds the max over its last 2s positions. The memory's rows are prompts one after the
        other; log2(longest prompt) passes over (n, N) cost a third of a cummax over a padded (S, T, n) layout."""
        best = scores.clone()
        for step, outside in self._steps_back():
            earlier = best[:, :-step] + outside                                      # the row `step` back, in the prompt
            if best.requires_grad:                                                    # the dense pass's autograd
                best = torch.cat([best[:, :step], torch.maximum(best[:, step:], earlier)], 1)
            else:
                torch.maximum(best[:, step:], earlier, out=best[:, step:])
        return best

    def _argmax_before(self, scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """scores (n, N), rows (k, n) -> for each row and neuron, the row of its prompt up to it where scores
        peak (k, n)."""
        _, first, longest = self._layout()
        start = first[rows]                                                          # (k, n)
        back = torch.arange(longest, device=rows.device)                             # (T,)
        at = (start.unsqueeze(-1) + back).clamp_max(scores.shape[1] - 1)             # (k, n, T)
        neuron = torch.arange(scores.shape[0], device=rows.device).view(1, -1, 1)
        seen = scores[neuron, at].masked_fill(at > rows.unsqueeze(-1), float("-inf"))
        return start + seen.argmax(-1)


def _prompt_layout(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S,) lengths of prompts one after the other -> each row's index in its prompt (N,) and its prompt's first
    row (N,)."""
    first = (lengths.cumsum(0) - lengths).repeat_interleave(lengths)                 # (N,)
    return torch.arange(len(first), device=lengths.device) - first, first


def _highest(a: torch.Tensor, count: int, every: int = 32) -> torch.Tensor:
    """a (n, N) -> the columns of each row's `count` highest values, highest first (count, n). A threshold from
    every `every`-th value leaves ~2 x count candidates, and the top-k of those is the top-k of the row whenever
    at least `count` pass (else the whole row's): 160k rows, count 2000, 3 neurons: 1.5 ms instead of 3.4."""
    sample = a[:, ::every]
    if sample.shape[1] <= 2 * count // every + 8:
        return a.topk(count, dim=1).indices.t()
    bars = sample.topk(2 * count // every + 8, dim=1).values[:, -1]                     # (n,)
    found = []
    for row, bar in zip(a, bars):
        passed = (row >= bar).nonzero().squeeze(1)                                     # (C,)
        found.append(passed[row[passed].topk(count).indices] if len(passed) >= count else row.topk(count).indices)
    return torch.stack(found, 1)


def _rows_times(matrix: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(N, H), rows (k, n), keys (n, H) -> matrix[rows[i, j]] . keys[j] (k, n); a matrix-vector product per
    neuron (1 thread, k 1000: 3 neurons 0.49 ms, as a product and a sum over (k, n, H) 1.5, batched 2.9)."""
    return torch.stack([matrix.index_select(0, rows[:, j]) @ keys[j] for j in range(rows.shape[1])], 1)


class TopRows:
    """Each new neuron's top-k memory pre-activations, step after step of one edit's training
    (Memory.top_preactivation, leaving out the rows `skip`). With `every` > 1 and a memory over 16k rows, after
    the first FULL_CALLS calls the pass over the whole memory runs every `every`-th call only, and finds each
    neuron's top SPARE x k rows; the calls in between find the top k among the prompts that hold those rows
    (Memory.holding, a view with the rows' int8 copies). Late in SmolLM2's stream (160k rows) the whole-memory
    pass (two int8 products, a running max, a top-k) was 60% of a step. A new key moves fast at first (Adam at
    lr 1e-2 from its initialisation), so its top rows do too: with a pass every 5 calls from the start the memory
    loss was off by a median 10% (at most 38%) in the first 10 calls, 0.3% (10%) in calls 10-25, 0.002% (1.1%)
    in calls 25-50 and 0.002% (0.15%) after 50 (8 SmolLM2 edits after 400)."""

    SPARE = 2              # the prompts of each neuron's top SPARE x k rows are searched between passes
    FULL_CALLS = 25        # the first calls each pass over the whole memory

    def __init__(self, memory: Memory, k: int, search: str = "exact", every: int = 1,
                 skip: torch.Tensor | None = None):
        self.memory, self.k, self.search, self.skip = memory, k, search, skip
        self.every = every if len(memory) > 16 * k else 1
        self.calls, self.near = 0, None

    def __call__(self, neurons) -> torch.Tensor:                                      # (k, n)
        self.calls += 1
        if self.every <= 1 or self.calls < self.FULL_CALLS:
            return self.memory.top_preactivation(neurons, self.k, self.search, self.skip)
        if (self.calls - self.FULL_CALLS) % self.every == 0:
            top, rows = self.memory.top_rows(neurons, self.k, self.search, self.skip, (self.SPARE - 1) * self.k)
            self.near = self.memory.holding(rows.flatten())    # skipped rows are whole prompts, never picked
            return top
        return self.near.top_preactivation(neurons, self.k, self.search)
