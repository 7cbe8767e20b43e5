"""The baselines a user would otherwise reach for (and the paper's): fine-tune the last FFN layer on each
mistake, in sequence (FT-last), optionally with a KL term that keeps the outputs on locality examples where
the original model had them (FT-last+KL, as FT+KL does for whole models).

They run on the same cached tensors as the editor: the last FFN is position-wise, so the fine-tuned model's
logits at a cached position are tail(h - ffn(q) + ffn'(q)) exactly, with ffn' a trainable copy of the FFN.
`FineTuneEditor` is an `Editor` whose patch is that difference instead of new neurons, so every metric
(SR, GR, ER, TrainR, TestR) is measured the same way for both.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .editor import Editor, EditOutcome
from .examples import Cached, Example


class FFNDelta(nn.Module):
    """q (..., H) -> ffn'(q) - ffn(q): what fine-tuning the last FFN adds to the residual stream."""

    def __init__(self, ffn: nn.Module):
        super().__init__()
        self.original = ffn
        self.tuned = copy.deepcopy(ffn).requires_grad_(True)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            before = self.original(q)
        return self.tuned(q) - before                                   # (..., H)

    def __len__(self) -> int:          # no neurons are added
        return 0


class FineTuneEditor(Editor):
    """Sequential fine-tuning of the last FFN. `kl_weight` > 0 adds KL(original || tuned) on `kl_batch`
    cached locality examples drawn per step (FT-last+KL); 0 is plain FT-last."""

    def __init__(self, *args, kl_examples: list[Cached] = (), kl_weight: float = 0.0, kl_batch: int = 32,
                 lr: float = 1e-4, **kwargs):
        super().__init__(*args, **kwargs)
        self.delta = FFNDelta(self.arch.ffn_module())
        self.kl_examples, self.kl_weight, self.kl_batch, self.ft_lr = list(kl_examples), kl_weight, kl_batch, lr
        self.opt = torch.optim.Adam(self.delta.tuned.parameters(), lr=lr, fused=True)   # one kernel: 2.6M weights
        self._rng = torch.Generator().manual_seed(self.cfg.seed)
        self._references: dict[int, torch.Tensor] = {}

    def stream(self, c: Cached, neurons=None) -> torch.Tensor:
        """(P, H); `neurons` given (the empty set of a locality baseline): that patch on the original model."""
        if neurons is not None:
            return super().stream(c, neurons)
        return c.h + self.delta(c.q)

    def _forward(self, c: Cached) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (the edit's logits (P, V), with FT+KL the KL term on `kl_batch` locality examples drawn now, else
        None), from one call of the output layer: it reads its whole weight matrix (~110 MB for SmolLM2) per
        call, forward and backward, which bounds a step's time on a CPU."""
        if not (self.kl_weight and self.kl_examples):
            return self.logits(c), None
        pick = torch.randperm(len(self.kl_examples), generator=self._rng)[: self.kl_batch].tolist()
        q = torch.cat([c.q] + [self.kl_examples[i].q for i in pick])           # (P + K, H) judged positions
        h = torch.cat([c.h] + [self.kl_examples[i].h for i in pick])
        logits = self.arch.tail(h + self.delta(q))                               # (P + K, V)
        reference = torch.cat([self._reference(i) for i in pick])               # (K, V)
        tuned = F.log_softmax(logits[len(c.q):], -1)
        return logits[: len(c.q)], F.kl_div(tuned, reference, log_target=True, reduction="batchmean")

    @torch.no_grad()
    def _reference(self, i: int) -> torch.Tensor:
        """The original model's log-probabilities at locality example i's judged positions (P, V), computed once:
        the original model's side needs no output layer at every step."""
        if i not in self._references:
            self._references[i] = F.log_softmax(self.arch.tail(self.kl_examples[i].h), -1)
        return self._references[i]

    def edit(self, error_id: str, input: str, target: str, rephrases: list[str] = (), phrasings: list[str] = (),
             path: str = "fast") -> EditOutcome:
        # The baselines train on the input alone, as in the paper: `phrasings` are not used.
        if error_id in self.edited:
            raise ValueError(f"error {error_id!r} was already edited")
        start = time.perf_counter()
        c = self.cache([Example(input, target)])[0]
        right, lead, before = self.judge(c)
        if right:
            outcome = EditOutcome(error_id, input, "skipped", before, before, target, lead=lead,
                                  seconds=time.perf_counter() - start)
            self.outcomes.append(outcome)
            return outcome
        self.edited[error_id] = c
        step, loss = 0, None
        while True:                # one forward per step: the logits after `step` updates, checked, then trained on
            drawn = self._rng.get_state()
            logits, kl = self._forward(c)                                        # (P, V), KL term or None
            right = bool((self.task.leads(logits.detach(), c.targets) > 0).all())
            if (step and right) or step == self.cfg.max_steps:
                self._rng.set_state(drawn)       # the locality examples drawn for a step not taken: drawn again
                break
            step += 1
            loss = self.task.edit_loss(logits.unsqueeze(0), c.targets, self.cfg)
            if kl is not None:
                loss = loss + self.kl_weight * kl
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        right, lead, after = self.judge(c)
        seconds = time.perf_counter() - start
        generalization = self.accuracy(self.cache([Example(r, target) for r in rephrases])) if rephrases else None
        outcome = EditOutcome(error_id, input, "edited" if right else "failed", before, after, target, steps=step,
                              seconds=seconds, lead=lead, generalization=generalization,
                              losses={} if loss is None else {"loss": float(loss.detach())})
        self.outcomes.append(outcome)
        return outcome
