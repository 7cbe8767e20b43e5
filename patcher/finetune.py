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
from .tasks import Cached, Example


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
        self.opt = torch.optim.Adam(self.delta.tuned.parameters(), lr=lr)
        self._rng = torch.Generator().manual_seed(self.cfg.seed)

    def logits(self, c: Cached, neurons=None) -> torch.Tensor:
        """(P, V); `neurons` given (the empty set of a locality baseline): that patch on the original model."""
        if neurons is not None:
            return super().logits(c, neurons)
        return self.arch.tail(c.h + self.delta(c.q))

    def _kl(self) -> torch.Tensor:
        pick = torch.randperm(len(self.kl_examples), generator=self._rng)[: self.kl_batch]
        q = torch.cat([self.kl_examples[i].q for i in pick])                 # (K, H) judged positions
        h = torch.cat([self.kl_examples[i].h for i in pick])
        with torch.no_grad():
            reference = F.log_softmax(self.arch.tail(h), -1)
        tuned = F.log_softmax(self.arch.tail(h + self.delta(q)), -1)
        return F.kl_div(tuned, reference, log_target=True, reduction="batchmean")

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
        step = 0
        for step in range(1, self.cfg.max_steps + 1):
            loss = self.task.edit_loss(self.logits(c).unsqueeze(0), c.targets, self.cfg)
            if self.kl_weight and self.kl_examples:
                loss = loss + self.kl_weight * self._kl()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                if bool((self.task.leads(self.logits(c), c.targets) > self.cfg.success_margin).all()):
                    break
        right, lead, after = self.judge(c)
        seconds = time.perf_counter() - start
        generalization = self.accuracy(self.cache([Example(r, target) for r in rephrases])) if rephrases else None
        outcome = EditOutcome(error_id, input, "edited" if right else "failed", before, after, target, steps=step,
                              seconds=seconds, lead=lead, generalization=generalization, losses={"loss": float(loss.detach())})
        self.outcomes.append(outcome)
        return outcome
