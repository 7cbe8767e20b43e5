"""An example (input, target) and what the engine caches of it from the unpatched model, once per process
(`SharedCache`) or on disk (`activations`)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Example:
    input: str
    target: str


@dataclass
class Cached:
    """One example at its judged positions. P judged positions, T input positions, H hidden size."""

    q: torch.Tensor          # (P, H) FFN input at the judged positions
    h: torch.Tensor          # (P, H) pre-norm stream after the unpatched FFN at the judged positions
    targets: torch.Tensor    # (P,)   target label / token id per judged position
    q_memory: torch.Tensor   # (M, H) FFN inputs this example contributes to the memory
    # with a subject key (Task.subject_layer, patcher/engine/subject.py); decoder-only, so the M memory positions are
    # the input's T positions
    z: torch.Tensor | None = None    # (T, H) the subject layer's FFN input at every position
    at: torch.Tensor | None = None   # (P,)   the judged positions' indices into z


class SharedCache:
    """The unpatched model's cached examples by (input, target), for several editors of one model in one
    process: each caches an edit's input, wordings, negatives and rephrases from the same frozen model, so the
    benchmark's five editors (and seeds) on one stream would run each prompt five times (a third of a patcher
    edit's time on SmolLM2). An entry keeps the subject layer's inputs (z) of the task that computed it; a task
    without a subject key takes it without them, one with another subject layer computes its own (every time)."""

    def __init__(self):
        self._entries: dict[tuple[str, str], tuple[int | None, Cached]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, example: Example, subject_layer: int | None) -> Cached | None:
        found = self._entries.get((example.input, example.target))
        if found is None:
            return None
        layer, cached = found
        if layer == subject_layer:
            return cached
        return replace(cached, z=None, at=None) if subject_layer is None else None

    def put(self, example: Example, subject_layer: int | None, cached: Cached) -> None:
        key = (example.input, example.target)
        if key not in self._entries or self._entries[key][0] is None:   # an entry with z serves more tasks: kept
            self._entries[key] = (subject_layer, cached)
