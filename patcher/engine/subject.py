"""The subject key (EditorConfig.subject_layer): a patch neuron in the last FFN whose pre-activation at
position t also reads an earlier layer's FFN input z, as a running max over the prompt so far:

    a(t) = k . q[t] + b + max_{p <= t} u . z[p]

k . q (the last FFN's input at the answer position) says which question is asked; the running max says that
the subject was named somewhere before, in whatever wording (docs/RESULTS.md). The max
needs no subject position at inference, and everything after the last FFN stays per position, so the cached
fast path stays exact. Only decoder-only models (causal: position t sees p <= t) have a subject key.
"""
from __future__ import annotations

import re

import torch

from .prompt import prompt_offsets

SCAN_STEPS = 16     # the exported running max's doubling steps: prompts up to 2**16 positions


def running_max(scores: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """max over positions p <= t along `dim` (the positions), for every t. (..., T, n) -> (..., T, n).
    torch.cummax has no ONNX export: while exporting, a doubling scan (each step takes the max with the row 2**i
    earlier, or the first row), linear in T, exact, for any T up to 2**SCAN_STEPS."""
    if not torch.onnx.is_in_onnx_export():
        return scores.cummax(dim).values
    s = scores.movedim(dim, -2)                                                    # (..., T, n)
    positions = torch.arange(s.shape[-2], device=s.device)                         # (T,)
    for step in range(SCAN_STEPS):
        s = torch.maximum(s, s.index_select(-2, (positions - 2 ** step).clamp(min=0)))
    return s.movedim(-2, dim)


def shared_text(text: str, others: list[str], max_words: int = 64) -> str:
    """The longest run of whole words of `text` (at most `max_words`, with the punctuation that ends a word's run,
    as in "France?") found in every one of `others`: an edit's wordings share its subject (520 of SmolLM2's 523
    records: the bank's subject). `text` itself when there are no others or nothing is shared."""
    starts = [m.start() for m in re.finditer(r"\w+", text)]
    ends = sorted({m.end() for m in re.finditer(r"\w+", text)} | {m.end() for m in re.finditer(r"\S+", text)})
    best = ""
    for start in starts:
        for end in [e for e in ends if e > start][: 2 * max_words]:
            piece = text[start:end]
            if len(piece) > len(best) and all(piece in o for o in others):
                best = piece
    return best if best and others else text


def subject_position(tokenizer, text: str, subject: str, prompt_format: str = "text",
                     max_length: int | None = None) -> int:
    """Index of the subject's last token in the prompt of `text` (tokenised as the task does, prompt.py)."""
    start = text.find(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} not in {text!r}")
    offsets = prompt_offsets(tokenizer, text, prompt_format, max_length)
    # not specials; a chat prompt cut before its subject (prompt.py keeps its end): from its first token
    return max((i for i, (a, b) in enumerate(offsets) if b > a and a < start + len(subject)), default=0)


def subject_part(z: torch.Tensor, subject_keys: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
    """The subject part of n neurons' pre-activations: z (..., T, H) at every position, subject_keys (n, H)
    -> (..., T, n), or at the positions `at` (..., P) -> (..., P, n). Right-padded inputs need no mask: padding
    comes after every real position, and a running max looks back only."""
    s = running_max(z @ subject_keys.t())                                          # (..., T, n)
    if at is None:
        return s
    return s.gather(-2, at.unsqueeze(-1).expand(*at.shape, s.shape[-1]))
