"""The activation memory: FFN inputs q of inputs a new patch must NOT fire on.

It decides locality, so it is built from the task's own distribution (the training split of the model's
task) and grows with every edit input the editor sees (patched or already right), so a later patch cannot
fire on an earlier edit. A separate validation memory (from the validation split) decides early stopping.
"""
from __future__ import annotations

import torch

from .tasks import Cached, Example, Task


class Memory:
    """A growing (N, H) matrix of FFN inputs."""

    def __init__(self, vectors: torch.Tensor):
        self.vectors = vectors                       # (N, H)

    @classmethod
    def from_examples(cls, task: Task, examples: list[Example], max_vectors: int | None = None,
                      seed: int = 0) -> "Memory":
        return cls.from_cached(task.cache(examples), max_vectors, seed)

    @classmethod
    def from_cached(cls, cached: list[Cached], max_vectors: int | None = None, seed: int = 0) -> "Memory":
        if not cached:
            raise ValueError("a memory needs at least one example")
        vectors = torch.cat([c.q_memory for c in cached])
        if max_vectors is not None and len(vectors) > max_vectors:
            g = torch.Generator().manual_seed(seed)
            vectors = vectors[torch.randperm(len(vectors), generator=g)[:max_vectors].to(vectors.device)]
        return cls(vectors)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def append(self, q: torch.Tensor) -> None:
        self.vectors = torch.cat([self.vectors, q.to(self.vectors)])

    def to(self, device) -> "Memory":
        return Memory(self.vectors.to(device))
