"""Classification and generation: how an (input, target) pair becomes model inputs, which positions are
judged, the edit loss, and when an output counts as right.

An example is cached once, from the UNPATCHED model: at each judged position p the FFN input q_p and the
pre-norm stream h_p. Since everything after the last FFN is position-wise, the logits of the model with
patch neurons N are tail(h_p + N(q_p)) exactly (see arch.py), so edits and checks never re-run the model.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import activations
from .arch import Arch
from .examples import Cached, Example, SharedCache
from .prompt import answer_text, check_prompt_format, prompt_ids


class Task:
    """Base class: tokenisation and capture are shared, subclasses say what is judged."""

    name = "base"
    # threads for a large set's forward pass (0: every core). A process forked after its parent ran parallel
    # regions (the benchmark's --jobs workers) must stay on 1: GNU OpenMP is not fork-safe, and the child's first
    # parallel region on more threads waited forever on the parent's thread pool.
    batch_threads = 0

    def __init__(self, arch: Arch, tokenizer, max_length: int = 128, subject_layer: int | None = None,
                 prompt_format: str = "text"):
        self.arch = arch
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.subject_layer = subject_layer     # also cache that layer's FFN input (Cached.z)
        self.prompt_format = prompt_format     # generation: how an input is put to the model (prompt.py)
        self._fingerprint: str | None = None
        self.shared: SharedCache | None = None    # shared with other editors of this model (SharedCache)

    # --- subclasses ---------------------------------------------------------------------------------
    def encode(self, examples: list[Example]) -> tuple[dict, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """-> (model inputs for the batch, judged positions per example, targets per example,
        mask (B, T) of positions whose FFN input joins the memory)."""
        raise NotImplementedError

    def edit_loss(self, logits: torch.Tensor, targets: torch.Tensor, cfg) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, logits: torch.Tensor) -> str:
        """The model's answer from the judged logits (P, V)."""
        raise NotImplementedError

    def probe_target(self) -> str:
        """Any valid target (for the model's fingerprint, activations.py)."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------
    @torch.no_grad()
    def cache(self, examples: list[Example], batch_size: int = 32) -> list[Cached]:
        """Runs the model (eval mode, no patch attached) and caches q and h at the judged positions, taking each
        example from the first of three caches that has it: `shared` when it holds all of a large set (another
        editor's memory); for a large set, the on-disk activation cache (on a miss computed on every core and
        stored); `shared` for those it holds (the rest computed and added)."""
        large = len(examples) >= activations.MIN_EXAMPLES
        if large and self.shared is not None:
            found = [self.shared.get(e, self.subject_layer) for e in examples]
            if all(c is not None for c in found):
                return found
        folder = activations.directory() if large else None
        if folder is not None:
            return self._on_disk(folder, examples, batch_size)
        return self._shared(examples, batch_size) if self.shared is not None else self._compute(examples, batch_size)

    def _on_disk(self, folder, examples: list[Example], batch_size: int) -> list[Cached]:
        if self._fingerprint is None:
            probe = self._compute([Example(activations.PROBE, self.probe_target())])[0]
            self._fingerprint = activations.fingerprint(self, probe)
        path = folder / f"{activations.key(self, examples, self._fingerprint)}.safetensors"
        found = activations.load(path, next(self.arch.model.parameters()).device)
        if found is not None:
            return found
        threads = torch.get_num_threads()
        torch.set_num_threads(self.batch_threads or os.cpu_count() or 1)   # a batched forward pass: cores pay off
        try:
            out = self._compute(examples, batch_size)
        finally:
            torch.set_num_threads(threads)
        activations.save(path, out)
        return out

    def _shared(self, examples: list[Example], batch_size: int) -> list[Cached]:
        found = [self.shared.get(e, self.subject_layer) for e in examples]
        missing = [e for e, c in zip(examples, found) if c is None]
        computed = iter(self._compute(missing, batch_size) if missing else [])
        out = []
        for example, cached in zip(examples, found):
            if cached is None:
                cached = next(computed)
                self.shared.put(example, self.subject_layer, cached)
            out.append(cached)
        return out

    @torch.no_grad()
    def _compute(self, examples: list[Example], batch_size: int = 32) -> list[Cached]:
        model, arch = self.arch.model, self.arch
        device = next(model.parameters()).device
        out: list[Cached | None] = [None] * len(examples)
        # batches of similar lengths: in the order given, a third of the positions of SmolLM2's stream prompts
        # (inputs, wordings, negatives, rephrases) were padding
        order = sorted(range(len(examples)), key=self.lengths(examples).__getitem__) \
            if len(examples) > batch_size else list(range(len(examples)))
        for start in range(0, len(examples), batch_size):
            places = order[start:start + batch_size]
            batch = [examples[i] for i in places]
            inputs, positions, targets, mem_mask = self.encode(batch)
            seen = {}
            hooks = [arch.ffn_in.register_forward_pre_hook(lambda m, a: seen.__setitem__("q", a[0])),
                     arch.norm_in.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0]))]
            if self.subject_layer is not None:
                hooks.append(arch.ffn_in_at(self.subject_layer).register_forward_pre_hook(
                    lambda m, a: seen.__setitem__("z", a[0])))
            try:
                was_training = model.training
                model.eval()
                arch.backbone()(**{k: v.to(device) for k, v in inputs.items()})
                model.train(was_training)
            finally:
                for hook in hooks:
                    hook.remove()
            q, h = seen["q"], seen["h"]                       # (B, T, H)
            for i, place in enumerate(places):
                pos, real = positions[i].to(device), mem_mask[i].to(device)
                subject = {} if self.subject_layer is None else {"z": seen["z"][i, real].clone(), "at": pos}
                out[place] = Cached(q=q[i, pos].clone(), h=h[i, pos].clone(), targets=targets[i].to(device),
                                    q_memory=q[i, real].clone(), **subject)
        return out

    def lengths(self, examples: list[Example]) -> list[int]:
        """Each example's number of model positions (the sum of its input widths, unpadded)."""
        return [sum(v.shape[-1] for k, v in self.encode([e])[0].items() if k.endswith("input_ids")) for e in examples]

    def leads(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(P, V), (P,) -> (P,): logit of the target minus the best other logit (> 0: target is the argmax)."""
        target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        others = logits.scatter(-1, targets.unsqueeze(-1), float("-inf"))
        return target_logit - others.max(-1).values

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padding, so causal positions are untouched by the padding. -> ids (B, T), mask (B, T)."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        return ids, mask


class ClassificationTask(Task):
    """The edit fixes a label; the judged position is [CLS] (0), which is also what joins the memory."""

    name = "classification"

    def __init__(self, arch, tokenizer, max_length: int = 128):
        super().__init__(arch, tokenizer, max_length)
        id2label = arch.model.config.id2label
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.label_ids = {name: i for i, name in enumerate(self.labels)}

    def label_id(self, target: str) -> int:
        if target not in self.label_ids:
            raise ValueError(f"unknown label {target!r}; the model's labels are {self.labels}")
        return self.label_ids[target]

    def encode(self, examples):
        enc = self.tokenizer([e.input for e in examples], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        inputs = dict(enc)
        positions = [torch.tensor([0]) for _ in examples]
        targets = [torch.tensor([self.label_id(e.target)]) for e in examples]
        mem_mask = torch.zeros_like(enc["input_ids"], dtype=torch.bool)
        mem_mask[:, 0] = True
        return inputs, positions, targets, mem_mask

    def edit_loss(self, logits, targets, cfg):
        # (C, P, V) or (P, V) -> scalar. Reference: cross-entropy minus 0.1 x the output entropy.
        logits = logits.reshape(-1, logits.shape[-1])
        targets = targets.reshape(-1).expand(logits.shape[0]) if targets.numel() == 1 else targets.reshape(-1)
        logp = logits.log_softmax(-1)
        ce = -logp.gather(-1, targets.unsqueeze(-1)).mean()
        entropy = -(logp.exp() * logp).sum(-1).mean()
        return ce - cfg.entropy_weight * entropy

    def decode(self, logits):
        return self.labels[int(logits[0].argmax())]

    def probe_target(self):
        return self.labels[0]


class GenerationTask(Task):
    """The edit fixes an answer. Teacher forcing on prompt + answer; position p judges answer token p.
    Success (every answer token is the argmax, in order) is the same as: the greedy continuation of the
    prompt equals the answer's tokens. The prompt and the answer's text are the prompt format's (prompt.py:
    the input as is and one space before the answer, or the chat template's user turn and the answer as is).
    Every non-pad position joins the memory."""

    name = "generation"

    def answer_ids(self, target: str) -> list[int]:
        ids = self.tokenizer(answer_text(target, self.prompt_format), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"target {target!r} has no tokens")
        return ids

    def encode(self, examples):
        prompts = [prompt_ids(self.tokenizer, e.input, self.prompt_format, self.max_length) for e in examples]
        answers = [self.answer_ids(e.target) for e in examples]
        targets = [torch.tensor(a) for a in answers]
        if self.arch.is_encoder_decoder:
            start = self.arch.model.config.decoder_start_token_id
            enc_ids, enc_mask = self._pad(prompts)
            dec_ids, dec_mask = self._pad([[start] + a[:-1] for a in answers])
            inputs = {"input_ids": enc_ids, "attention_mask": enc_mask,
                      "decoder_input_ids": dec_ids, "decoder_attention_mask": dec_mask}
            positions = [torch.arange(len(a)) for a in answers]
            return inputs, positions, targets, dec_mask.bool()
        seqs = [p + a[:-1] for p, a in zip(prompts, answers)]
        ids, mask = self._pad(seqs)
        positions = [torch.arange(len(p) - 1, len(p) - 1 + len(a)) for p, a in zip(prompts, answers)]
        return {"input_ids": ids, "attention_mask": mask}, positions, targets, mask.bool()

    def edit_loss(self, logits, targets, cfg):
        # (C, P, V) or (P, V): label-smoothed NLL averaged over the answer tokens (and copies)
        v = logits.shape[-1]
        t = targets.expand(logits.shape[:-1]) if logits.dim() == 3 else targets
        return F.cross_entropy(logits.reshape(-1, v), t.reshape(-1), label_smoothing=cfg.label_smoothing)

    def decode(self, logits):
        return self.tokenizer.decode(logits.argmax(-1).tolist()).strip()

    def probe_target(self):
        return "river"


def task_for(arch: Arch, tokenizer, subject_layer: int | None = None, prompt_format: str = "text") -> Task:
    check_prompt_format(tokenizer, prompt_format)
    if prompt_format != "text" and (arch.task == "classification" or arch.is_encoder_decoder):
        raise ValueError(f"prompt_format {prompt_format!r} needs a decoder-only language model, not {arch.name} "
                         f"({arch.task})")
    if subject_layer is not None:
        arch.ffn_in_at(subject_layer)                     # refuses architectures without a subject key
        if arch.task == "classification" or arch.is_encoder_decoder:
            raise ValueError(f"a subject key needs a decoder-only language model, not {arch.name} ({arch.task})")
    if arch.task == "classification":
        return ClassificationTask(arch, tokenizer)
    return GenerationTask(arch, tokenizer, subject_layer=subject_layer, prompt_format=prompt_format)
