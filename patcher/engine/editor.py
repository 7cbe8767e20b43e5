"""The sequential Transformer-Patcher editor.

Each mistake is fixed by training a few new neurons in the last FFN (one for classification, one per wrong
answer token for generation), with the model and all earlier neurons frozen:
  L = l_e + alpha * l_a + beta * (l_m1 + l_m2)      (config.py documents every term)

Two paths train the same neurons on the same schedule:
  fast       (default) on cached tensors: logits = tail(h + earlier(q) + new(q)) at the judged positions only;
             the model itself never runs during training.
  reference  the reference implementation's procedure: the whole model, the edit input fed
             `edit_copies` times per step (dropout on), the new neurons attached as a branch.
With dropout off both produce the same neurons (tests/test_editor.py).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn as nn

from .arch import adapter_for
from .config import EditorConfig
from .examples import Cached, Example
from .frames import FrameIndex
from .memory import Memory, TopRows
from .patch import NewNeurons, PatchBranch, PatchNeurons
from .rewording import rewordings
from .subject import shared_text, subject_position
from .tasks import task_for


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def patch_loss(cfg: EditorConfig, edit_loss: torch.Tensor, a_edit: torch.Tensor, memory_top: TopRows | None,
               new: "NewNeurons") -> tuple[torch.Tensor, dict]:
    """L = l_e + alpha * l_a + beta * (l_m1 + l_m2), from the edit loss and the new neurons' pre-activations
    on the edit input, a_edit (C, n) for C copies of it. l_a pushes a_edit up; l_m1 pushes it above the
    top-k memory pre-activations (memory_top(new), patcher.engine.memory.TopRows) by m1; l_m2 pushes those below m2."""
    l_a = _topk_mean(torch.exp(cfg.act_margin - a_edit), cfg.act_topk)
    parts = {"l_e": edit_loss, "l_a": l_a}
    total = edit_loss + cfg.alpha * l_a
    if memory_top is not None and len(memory_top.memory) and cfg.beta:   # beta 0 (the ablation): no memory pass
        parts["l_m1"], parts["l_m2"] = memory_losses(cfg, a_edit, memory_top(new))
        total = total + cfg.beta * (parts["l_m1"] + parts["l_m2"])
    return total, parts


def _topk_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the top-k along dim 0 (all of it when k covers it: one op less per training step)."""
    return x.mean() if k >= x.shape[0] else x.topk(k, dim=0).values.mean()


def memory_losses(cfg: EditorConfig, a_edit: torch.Tensor, top: torch.Tensor):
    """a_edit (C, n), top (k, n): the new neurons' top-k memory pre-activations -> (l_m1, l_m2)."""
    l_m1 = torch.exp(top.unsqueeze(0) - a_edit.unsqueeze(1) + cfg.m1).mean()         # (C, k, n)
    l_m2 = torch.exp(top - cfg.m2).mean()
    return l_m1, l_m2


def _batches(cached: list[Cached], rows: int):
    """Consecutive runs of cached examples with at most `rows` judged positions together (one if it has more)."""
    batch, size = [], 0
    for c in cached:
        if batch and size + len(c.targets) > rows:
            yield batch
            batch, size = [], 0
        batch.append(c)
        size += len(c.targets)
    if batch:
        yield batch


def positions_to_patch(leads: torch.Tensor, cfg: EditorConfig) -> torch.Tensor:
    """(K, P) leads of the edit input (row 0) and its training phrasings at the answer positions -> the
    positions that get a neuron: those wrong in any row, at most max_neurons_per_edit; the weakest of the
    input when every row is right."""
    wrong = (leads <= 0).any(0).nonzero().flatten()
    if len(wrong) == 0:
        wrong = leads[0].argmin().reshape(1)
    return wrong[: cfg.max_neurons_per_edit]


@dataclass
class EditOutcome:
    """What happened to one error record."""

    error_id: str
    input: str
    status: str                      # "edited", "failed" (not right within the limits), "skipped" (already right)
    prediction_before: str
    prediction_after: str
    target: str
    steps: int = 0
    seconds: float = 0.0
    neurons: int = 0                 # neurons added to the patch set by this edit
    shifts_taken_back: int = 0       # earlier neurons whose bias shift was lowered (Editor._take_back_shifts)
    lead: float | None = None        # smallest lead of a target over the best other logit, after the edit
    generalization: float | None = None   # share of the rephrases right right after the edit
    losses: dict = field(default_factory=dict)
    reason: str | None = None        # why a failed edit failed

    @property
    def succeeded(self) -> bool:
        return self.status == "edited"

    def to_dict(self) -> dict:
        return asdict(self)


class Editor:
    """Sequential editor over one model. Holds the patch neurons (frozen model untouched), the memory, and
    the cached inputs of every edit so ER and rollbacks are cheap."""

    def __init__(self, model, tokenizer, config: EditorConfig | None = None, memory: Memory | None = None,
                 val_memory: Memory | None = None, neurons: PatchNeurons | None = None,
                 owners: list[str] | None = None):
        self.cfg = config or EditorConfig()
        self.device = resolve_device(self.cfg.device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.arch = adapter_for(model)
        self.arch.output_grad = self.cfg.output_grad
        self.task = task_for(self.arch, tokenizer, self.cfg.subject_layer, self.cfg.prompt_format)
        activation = self.patch_activation(self.arch, self.cfg.activation, neurons)
        dtype = next(model.parameters()).dtype
        self.neurons = neurons.to(self.device) if neurons is not None else \
            PatchNeurons.empty(self.arch.hidden_size, activation, dtype, self.device, self.cfg.subject_layer)
        if self.neurons.activation != activation:
            raise ValueError(f"existing patches use {self.neurons.activation}, the config asks for {activation}")
        if self.neurons.subject_layer != self.cfg.subject_layer:
            raise ValueError(f"existing patches have subject_layer {self.neurons.subject_layer}, the config asks "
                             f"for {self.cfg.subject_layer}")
        self.owners: list[str] = list(owners or [])          # error id of each neuron
        self.memory = memory.to(self.device) if memory is not None else None
        self.val_memory = val_memory.to(self.device) if val_memory is not None else None
        self.edited: dict[str, Cached] = {}                   # error id -> cached edit input
        self.remembered: dict[str, list[str]] = {}            # error id -> the prompts it added to the memory
        self.frames: FrameIndex | None = FrameIndex() if self.cfg.frames else None   # prompts seen, with targets
        self.outcomes: list[EditOutcome] = []

    @staticmethod
    def patch_activation(arch, setting: str, existing: PatchNeurons | None = None) -> str:
        if setting == "auto":          # a patch set keeps one activation: new neurons follow the earlier ones
            return existing.activation if existing is not None and len(existing) else "knee"
        return arch.ffn_act_name if setting == "ffn" else setting

    # --- reading the patched model from the cache ---------------------------------------------------------
    def cache(self, examples: list[Example]) -> list[Cached]:
        return self.task.cache(examples)

    def stream(self, c: Cached, neurons: PatchNeurons | None = None) -> torch.Tensor:
        """(P, H) the residual stream after the last FFN at the judged positions, with the given neurons
        (default: the current patch set)."""
        neurons = self.neurons if neurons is None else neurons
        return c.h + neurons(c.q, c.z, c.at)

    def logits(self, c: Cached, neurons: PatchNeurons | None = None) -> torch.Tensor:
        """(P, V) logits at the judged positions with the given neurons (default: the current patch set)."""
        return self.arch.tail(self.stream(c, neurons))

    def judge(self, c: Cached, neurons: PatchNeurons | None = None) -> tuple[bool, float, str]:
        """-> (right, smallest lead, decoded prediction)."""
        return self.judge_all([c], neurons)[0]

    @torch.no_grad()
    def judge_all(self, cached: list[Cached], neurons: PatchNeurons | None = None,
                  rows: int = 256) -> list[tuple[bool, float, str]]:
        """judge() of each cached example, the output layer run once per `rows` judged positions: a language
        model's output layer costs about as much for one row as for 8 on a CPU (cpu/output_layer.py), and
        a locality set, ER or GR judges hundreds of 1-3-position examples."""
        out = []
        for batch in _batches(cached, rows):
            streams = [self.stream(c, neurons) for c in batch]                  # [(P_i, H)]
            logits = self.arch.tail(torch.cat(streams)).split([len(s) for s in streams])   # [(P_i, V)]
            for c, lg in zip(batch, logits):
                leads = self.task.leads(lg, c.targets)
                out.append((bool((leads > 0).all()), float(leads.min()), self.task.decode(lg)))
        return out

    def accuracy(self, cached: list[Cached], neurons: PatchNeurons | None = None) -> float | None:
        if not cached:
            return None
        return sum(right for right, _, _ in self.judge_all(cached, neurons)) / len(cached)

    def predictions(self, cached: list[Cached], neurons: PatchNeurons | None = None) -> list[str]:
        return [prediction for _, _, prediction in self.judge_all(cached, neurons)]

    # --- editing ------------------------------------------------------------------------------------------
    def edit(self, error_id: str, input: str, target: str, rephrases: list[str] = (),
             phrasings: list[str] = (), path: str = "fast", negatives: list[str] = ()) -> EditOutcome:
        """Fix one mistake on top of all earlier patches. Not patched again if already right. `phrasings`:
        other wordings of the input the new neurons are trained on as well (at most config.phrasings of
        them; never the `rephrases`, which measure Generality). `negatives`: prompts the new neurons must not
        fire on (e.g. other questions about the same subject), joining the memory before training. A record with
        no phrasings gets wordings, negatives and its subject from the frames of the prompts seen (config.frames)."""
        start = time.perf_counter()
        c = self.cache([Example(input, target)])[0]
        wordings, negatives, subject = self._wordings(c, input, target, phrasings, negatives)
        self._check_edit(error_id, wordings, path)                 # before anything about the patch set changes
        right, lead, before = self.judge(c)
        self.seen(input, target)
        if right:
            self.remember(c, input, error_id)
            return self._record(EditOutcome(error_id, input, "skipped", before, before, target, lead=lead,
                                            seconds=time.perf_counter() - start))
        untrainable = self._untrainable(c)
        if untrainable:
            self.edited[error_id] = c
            self.remember(c, input, error_id)
            return self._record(EditOutcome(error_id, input, "failed", before, before, target, lead=lead,
                                            seconds=time.perf_counter() - start, reason=untrainable))
        extra = self.cache([Example(p, target) for p in wordings])
        taken_back = self._take_back_shifts([c, *extra])
        for text, negative in zip(negatives, self.cache([Example(n, target) for n in negatives])):
            self.remember(negative, text, error_id)
        trial, positions, right, lead, after, steps, losses = self._train_and_judge(c, Example(input, target), path,
                                                                                   extra, wordings, subject)
        keep = right or self.cfg.keep_failed
        if keep:
            self.neurons = trial
            self.owners += [error_id] * len(positions)
        self.edited[error_id] = c
        for text, seen in zip([input, *wordings], [c, *extra]):
            self.remember(seen, text, error_id)
            self.seen(text, target)
        seconds = time.perf_counter() - start              # the edit itself; measuring GR below is not part of it
        generalization = None
        if rephrases:
            generalization = self.accuracy(self.cache([Example(r, target) for r in rephrases]))
        return self._record(EditOutcome(
            error_id, input, "edited" if right else "failed", before, after if keep else before, target,
            steps=steps, seconds=seconds, neurons=len(positions) if keep else 0, shifts_taken_back=taken_back,
            lead=lead, generalization=generalization, losses=losses,
            reason=None if right else f"not right within {self.cfg.max_steps} steps (smallest lead {lead:.3f})"))

    def _wordings(self, c: Cached, input: str, target: str, phrasings,
                  negatives) -> tuple[list[str], list[str], str | None]:
        """The edit's training wordings, negatives and subject (None: the text its wordings share): the record's,
        else, with config.frames, what the frames of the prompts seen so far give (engine/frames.py)."""
        wordings, negatives = list(phrasings)[: self.cfg.phrasings], list(negatives)
        if wordings or self.frames is None:
            return wordings, negatives, None
        match, found, others = self.frames.derive(input, self.cfg.phrasings, self.cfg.frame_negatives)
        if match is None:
            return [], negatives, None
        negatives = negatives or others
        if not found and self.cfg.reword:
            found = self._agreeing(c, target, rewordings(input, match.subject))[: self.cfg.phrasings]
            if found:               # the same rewordings of other subjects in its frame: the shape is not the fact
                slot = match.values.index(match.subject)
                negatives = negatives + [r for n, values in match.neighbours[:4]
                                         for r in rewordings(self.frames.texts[n], values[slot])]
        return found, negatives, match.subject

    @torch.no_grad()
    def _agreeing(self, c: Cached, target: str, candidates: list[str]) -> list[str]:
        """The candidates on which the unpatched model's answer starts as it does on the input (cached as c)."""
        if not candidates:
            return []
        cached = [c, *self.cache([Example(t, target) for t in candidates])]
        first = [int(self.arch.tail(x.h[:1]).argmax(-1)) for x in cached]
        return [t for t, f in zip(candidates, first[1:]) if f == first[0]]

    def seen(self, text: str, target: str) -> None:
        """A prompt and its target join the frames the next records' wordings come from (config.frames)."""
        if self.frames is not None:
            self.frames.add(text, target)

    def _check_edit(self, error_id: str, wordings: list[str], path: str) -> None:
        if error_id in self.owners or error_id in self.edited:
            raise ValueError(f"error {error_id!r} was already edited")
        if path not in ("fast", "reference"):
            raise ValueError(f"unknown path {path!r}: 'fast' or 'reference'")
        if wordings and path != "fast":
            raise ValueError("training on phrasings is a fast-path extension; the reference path edits the "
                             "input alone (set phrasings=0)")
        if self.cfg.subject_layer is not None and path != "fast":
            raise ValueError("the subject key (subject_layer) is a fast-path extension")

    def _untrainable(self, c: Cached) -> str | None:
        """Why training cannot make this edit right, if it cannot: each neuron fixes its own answer position."""
        if self.task.name != "generation":
            return None
        wrong = int((self.task.leads(self.logits(c), c.targets) <= 0).sum())
        if wrong <= self.cfg.max_neurons_per_edit:
            return None
        return (f"{wrong} answer tokens wrong, at most {self.cfg.max_neurons_per_edit} neurons per edit "
                "(max_neurons_per_edit): not trained")

    def _train_and_judge(self, c: Cached, example: Example, path: str, extra: list[Cached], wordings: list[str],
                         subject: str | None = None):
        """Trains the edit's neurons, then again as _retries says while it is still wrong.
        -> (patch set with them, their positions, right, smallest lead, prediction, steps, losses)."""
        # the subject key starts at the subject: given, else the text the input shares with its phrasings (else
        # its last token)
        subject = subject or shared_text(example.input, wordings)
        subject_at = subject_position(self.tokenizer, example.input, subject, self.task.prompt_format,
                                      self.task.max_length) \
            if self.cfg.subject_layer is not None else None
        # an earlier edit may have remembered this edit's own wordings (as its negatives): not rows to stay silent on
        skip = self.memory.rows_of([example.input, *wordings]) if self.memory is not None else None
        train = partial(self._train, c, example, path, extra, subject_at=subject_at, skip=skip)
        new, positions, steps, losses = train()
        trial, right, lead, after = self._kept(new, c, skip)
        for retry in self._retries():
            if right:
                break
            new, positions, more, losses = train(**retry)
            steps += more
            trial, right, lead, after = self._kept(new, c, skip)
        return trial, positions, right, lead, after, steps, losses

    def _record(self, outcome: EditOutcome) -> EditOutcome:
        self.outcomes.append(outcome)
        return outcome

    def _guarded_shifts(self, new: NewNeurons, skip: torch.Tensor | None) -> torch.Tensor | float:
        """Each new neuron's bias shift, (n,): config.bias_shift, but at most as far as leaves its highest memory
        pre-activation (the edit's negatives included, its own wordings `skip` not) config.shift_guard below
        the threshold. The shift moves the threshold into the gap the memory loss opened; where training
        left a memory row near the threshold there is no gap to move into."""
        cfg = self.cfg
        if not cfg.bias_shift or cfg.shift_guard is None or self.memory is None or not len(self.memory):
            return cfg.bias_shift
        with torch.no_grad():
            top = self.memory.top_preactivation(new, 1, cfg.memory_search, skip)[0]             # (n,)
        return (-top - cfg.shift_guard).clamp(0.0, cfg.bias_shift)

    def _retries(self) -> list[dict]:
        """How an edit still wrong is trained again, in order: without weight decay (retry_without_decay: decay
        pulls on every parameter alike, while the edit loss is a mean over every answer position of every wording,
        and held a long answer's values back), then on the whole vocabulary (when training used candidates). Each
        retry starts from the same initialisation; the decay-free one goes first because it runs on the
        candidates, while a whole-vocabulary step on a long answer multiplies every position of every wording by
        the output layer."""
        retries = [{"weight_decay": 0.0}] if self.cfg.retry_without_decay and self.cfg.weight_decay else []
        if self._candidates():
            retries.append({"candidates": 0})
        return retries

    def _kept(self, new: NewNeurons, c: Cached, skip: torch.Tensor | None = None) -> tuple[PatchNeurons, bool, float, str]:
        """The patch set with the new neurons, their biases raised by config.bias_shift (at most as far as
        _guarded_shifts allows) and values scaled by config.value_gain, unless that leaves the edit wrong (it
        can), then as trained.
        -> (patch set, right, smallest lead, prediction)."""
        shifted = self.neurons.extend(new.frozen(self._guarded_shifts(new, skip), self.cfg.value_gain))
        judged = self.judge(c, shifted)
        if not judged[0] and (self.cfg.bias_shift or self.cfg.value_gain != 1):
            plain = self.neurons.extend(new.frozen())
            as_trained = self.judge(c, plain)
            if as_trained[0]:
                return plain, *as_trained
        return shifted, *judged

    @torch.no_grad()
    def _take_back_shifts(self, wordings: list[Cached]) -> int:
        """Before a wrong edit is trained: each earlier neuron that fires on one of its wordings only because
        of its bias shift (a neuron's shift is a guess that unseen wordings near its own are its fact; this
        one is another fact) loses as much of the shift as keeps it silent on all of them: without this a
        near-twin fact ("Equatorial Guinea" after "Guinea") could not be fixed. -> how many neurons lost some."""
        shifts = self.neurons.shifts
        if not len(self.neurons) or not bool((shifts > 0).any()):
            return 0
        top = torch.stack([self.neurons.preactivation(w.q_memory, w.z).amax(0) for w in wordings]).amax(0)   # (N,)
        kept = torch.minimum(shifts, (shifts - top).clamp_min(0))                    # silent: top - shift + kept <= 0
        self.neurons = self.neurons.with_shifts(kept)
        return int((kept < shifts).sum())

    def remember(self, c: Cached, text: str, error_id: str) -> None:
        """`text`'s FFN inputs (c) join the memory; the edit `error_id` is said to have added them (a patch set
        keeps that list per edit, so an editor built on it later remembers them again)."""
        self.remembered.setdefault(error_id, []).append(text)
        if self.memory is not None:
            self.memory.append(c.q_memory, c.z, text)

    def neuron_positions(self, c: Cached, extra: list[Cached] = ()) -> torch.Tensor:
        """Judged positions that get a neuron: classification [CLS]; generation the answer tokens not yet
        right in the input or in any training phrasing (a rephrasing often fails on
        a token the input already gets right), at most max_neurons_per_edit."""
        if self.task.name == "classification":
            return torch.tensor([0], device=self.device)
        with torch.no_grad():
            leads = torch.stack([self.task.leads(self.logits(x), x.targets) for x in [c, *extra]])   # (K, P)
        return positions_to_patch(leads, self.cfg)

    def _candidates(self) -> int:
        return self.cfg.vocab_candidates if self.task.name == "generation" else 0

    def _train(self, c: Cached, example: Example, path: str, extra: list[Cached] = (),
               candidates: int | None = None, subject_at: int | None = None, weight_decay: float | None = None,
               skip: torch.Tensor | None = None):
        cfg = self.cfg
        positions = self.neuron_positions(c, extra)                            # (n,) judged-position indices
        generator = torch.Generator().manual_seed(cfg.seed + len(self.outcomes))
        z_subject = None if subject_at is None else c.z[min(subject_at, len(c.z) - 1)]   # past a truncation: the last
        new = NewNeurons(c.q[positions], self.neurons.activation, cfg.value_scale_init, generator, z_subject,
                         self.neurons.subject_layer)
        if path == "fast":
            k = self._candidates() if candidates is None else candidates
            forward, check, targets = self._fast_forward([c, *extra], new, positions, k)
        else:
            forward, check = self._reference_forward(c, example, new, positions)
            targets = lambda: c.targets                                         # noqa: E731

        decay = cfg.weight_decay if weight_decay is None else weight_decay
        opt = torch.optim.Adam(new.parameters(), lr=cfg.lr, weight_decay=decay, fused=True)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.plateau_factor,
                                                           patience=cfg.plateau_patience, min_lr=cfg.min_lr)
        previous_val, step, parts, right_checks = None, 0, {}, 0
        memory_top = None if self.memory is None else TopRows(self.memory, cfg.mem_topk, cfg.memory_search,
                                                              cfg.memory_full_pass_every, skip)
        for step in range(1, cfg.max_steps + 1):
            logits, a_edit = forward(True)                                     # (C, P, V), (C, n)
            loss, parts = patch_loss(cfg, self.task.edit_loss(logits, targets(), cfg), a_edit, memory_top, new)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(new.parameters(), cfg.grad_clip)
            opt.step()
            sched.step(loss.item())
            if step >= cfg.check_after and step % cfg.check_every == 0:
                with torch.no_grad():
                    logits, a_edit = check(False)
                    if not bool((self.task.leads(logits[0], c.targets) > 0).all()):
                        continue
                    right_checks += 1
                    if self.val_memory is None or not len(self.val_memory) or right_checks == cfg.max_checks_right:
                        break
                    top = self.val_memory.top_preactivation(new, cfg.mem_topk, cfg.memory_search)
                    val = sum(memory_losses(cfg, a_edit, top)).item()
                    if previous_val is not None and previous_val - val <= cfg.val_min_improvement:
                        break
                    previous_val = val
        losses = {k: float(v.detach()) for k, v in parts.items()}
        return new, positions, step, losses

    def _fast_forward(self, cached: list[Cached], new: NewNeurons, positions: torch.Tensor, k: int):
        """The edit input and its K-1 training phrasings (same answer, so the same P judged positions).
        -> (forward for training, forward for checks, the training targets): with k candidates, training
        sees only the candidate outputs (targets re-indexed into them), checks see every output and add
        each position's top k to the candidates."""
        q = torch.stack([c.q for c in cached])                                 # (K, P, H)
        base = torch.stack([c.h + self.neurons(c.q, c.z, c.at) for c in cached]).detach()   # (K, P, H), fixed
        z = at = None
        if self.cfg.subject_layer is not None:     # right-padded to the longest wording: (K, T, H), (K, P)
            z = nn.utils.rnn.pad_sequence([c.z for c in cached], batch_first=True)
            at = torch.stack([c.at for c in cached])
        columns = torch.arange(len(positions), device=self.device)
        targets = cached[0].targets                                            # (P,)
        picked = {}

        def full(train: bool):
            a = new.preactivation(q, z, at)                                    # (K, P, n)
            logits = self.arch.tail(base + new.output(a))                      # (K, P, V)
            if k:       # the candidates only grow: an output pushed down once is not free to rise again
                top = logits.detach().topk(k, dim=-1).indices.flatten()
                picked["rows"] = torch.unique(torch.cat([picked.get("rows", targets), top, targets]))  # (R,)
            return logits, a[:, positions, columns]                            # (K, P, V), (K, n)

        def candidates(train: bool):
            a = new.preactivation(q, z, at)                                    # (K, P, n)
            logits = self.arch.tail_rows(base + new.output(a), picked["rows"])  # (K, P, R)
            return logits, a[:, positions, columns]

        if not k:
            return full, full, lambda: targets
        with torch.no_grad():
            full(False)
        return candidates, full, lambda: torch.searchsorted(picked["rows"], targets)

    def _reference_forward(self, c: Cached, example: Example, new: NewNeurons, positions: torch.Tensor):
        inputs, judged, _, _ = self.task.encode([example])
        judged = judged[0].to(self.device)                                     # (P,) absolute positions
        copies = self.cfg.edit_copies
        batch = {k: v.to(self.device).repeat(copies, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
        seen = {}
        earlier = self.neurons
        columns = torch.arange(len(positions), device=self.device)

        class Branch(nn.Module):
            def forward(self, q):                                              # (B, T, H)
                seen["a"] = new.preactivation(q)                               # (B, T, n)
                return earlier(q) + new.output(seen["a"])

        def run(n_copies: int, train: bool):
            self.model.train(train and self.cfg.reference_dropout)
            branch = PatchBranch(self.arch, Branch())
            try:
                out = self.model(**{k: v[:n_copies] for k, v in batch.items()}).logits
            finally:
                branch.remove()
                self.model.eval()
            if out.dim() == 2:                                                 # classification (B, V)
                out = out.unsqueeze(1)
            logits = out[:, judged]                                            # (B, P, V)
            a_edit = seen["a"][:, judged[positions], columns]                  # (B, n)
            return logits, a_edit

        return (lambda train: run(copies, train)), (lambda train: run(1, False))

    # --- rollback ------------------------------------------------------------------------------------------
    def remove(self, error_id: str) -> int:
        """Remove every neuron of one edit. Neurons are independent additive terms, so the model's output on
        everything else is what it would be had this edit never been kept. -> number of neurons removed."""
        keep = torch.tensor([o != error_id for o in self.owners], dtype=torch.bool, device=self.device)
        removed = int((~keep).sum())
        if removed == 0:
            raise KeyError(f"no neurons belong to error {error_id!r}")
        self.neurons = self.neurons.select(keep)
        self.owners = [o for o in self.owners if o != error_id]
        self.edited.pop(error_id, None)
        return removed
