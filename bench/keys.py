"""Which key carries an edit to wordings it never saw? Patch neurons in SmolLM2's last FFN whose key also reads a
middle layer, trained and judged on cached features (facts-smollm2).

    .venv/bin/python bench/keys.py --per-relation 5 --kinds answer,both --layers 9,12 --sibling-negatives 3
    .venv/bin/python bench/keys.py --sequential 100 --kinds both --layers 9 --sibling-negatives 3
    .venv/bin/python bench/keys.py --keys-only --per-relation 2 --kinds answer,subject,both --layers 9,12

A Transformer-Patcher key reads the last FFN's input at the answer position, where SmolLM2 carries the prompt's
wording more than its subject (held-out rephrasings fire 0.3-0.6). A key at the subject's token in a middle
layer fires across wordings but also on every other prompt about the subject (bench/layers.py). Here every
neuron sits in the last FFN (so everything after it stays per position and the cached fast path is exact) and
its pre-activation at position t is one of:

- answer: a.x29[t] + b, the editor's key (x29: the last FFN's input);
- subject: max over positions p <= t of u.zL[p], + b (zL: layer L's FFN input; a running max, so no subject
  position is needed at inference);
- both: the sum of the two: the subject part says who, the answer part which relation.

Neurons are trained as the editor's (a neuron per wrong answer position of the input or its 7 training
wordings, edit loss with label smoothing, activation and memory losses with the editor's margins and top-k,
ReLU, Adam) on the edit input and training wordings until they are right (checked every 25 steps), against the
editor's memory (every position of --memory-examples sampled train-split wordings); `--sibling-negatives N`
adds the edit's subject in the first N training templates of its other relations to the memory (the bank's
templates: no other fact is read). The subject part starts from the subject's last token of the input
(`--subject-init last`: from the input's last token, for records that do not name their subject).
`--keys-only`: one neuron per edit, keys only (no value, no edit loss, --steps steps), measuring firing.

Measured right after each edit (alone) or at checkpoints (`--sequential N`, the stream's first N mistakes one
after the other, every neuron kept, the edits' wordings joining the memory): GR (held-out rephrasings right,
every answer token top-1), held-out firing, the first answer token of the subject's other facts (the bank's,
prompt and held-out wordings) and of the test split's facts (all their wordings) unchanged, ER. Wordings that
are in the memory are left out of every measure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from patcher import EditorConfig  # noqa: E402
from patcher.engine.arch import adapter_for  # noqa: E402
from patcher.engine.editor import positions_to_patch  # noqa: E402
from patcher.engine.examples import Example  # noqa: E402
from patcher.engine.records import read_records  # noqa: E402
from patcher.engine.subject import shared_text, subject_position  # noqa: E402
from patcher.engine.tasks import task_for  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.bank import sibling_prompts  # noqa: E402
from patcher.facts.mistakes import examples  # noqa: E402
from patcher.facts.sets import memory_facts  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402

LAST = 29


class Features:
    """FFN inputs of a set of prompts at the chosen layers, at every real position, flat: z[L] (N, H), each
    position's prompt `row` and index `col` (N,), `judged` (N,) marking answer positions, `first` (B,) the flat
    index of each prompt's first answer position, `targets` (J,) at the judged positions in order, and (with
    `with_h`) h (J, H): the stream before the final norm there, unpatched."""

    @torch.no_grad()
    def __init__(self, model, task, examples_: list[Example], layers: list[int], with_h: bool = False,
                 batch: int = 32):
        per_layer, rows, cols, judged, first, targets, hs = {L: [] for L in layers}, [], [], [], [], [], []
        seen = {}
        hooks = [model.model.layers[L].mlp.register_forward_pre_hook(
            lambda m, a, L=L: seen.__setitem__(L, a[0])) for L in layers]
        hooks.append(model.model.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0])))
        n = 0
        for s in range(0, len(examples_), batch):
            inputs, positions, answer, mask = task.encode(examples_[s:s + batch])
            model.model(**inputs)
            b, t = mask.nonzero(as_tuple=True)                                       # real positions
            for L in layers:
                per_layer[L].append(seen[L][b, t].float())
            is_judged = torch.zeros_like(mask)
            for i, p in enumerate(positions):
                is_judged[i, p] = True
                first.append(n + int(mask[:i].sum()) + int(p[0]))
                targets.append(answer[i])
                if with_h:
                    hs.append(seen["h"][i, p].float())
            rows.append(b + s)
            cols.append(t)
            judged.append(is_judged[b, t].bool())
            n += len(b)
        for h in hooks:
            h.remove()
        self.z = {L: torch.cat(v) for L, v in per_layer.items()}                     # (N, H)
        self.row, self.col, self.judged = torch.cat(rows), torch.cat(cols), torch.cat(judged)
        self.first, self.targets = torch.tensor(first), torch.cat(targets)           # (B,), (J,)
        self.h = torch.cat(hs) if with_h else None                                   # (J, H)
        self.shape = (len(examples_), int(self.col.max()) + 1)

    @classmethod
    def cat(cls, parts: list["Features"]) -> "Features":
        """Prompts of several sets, one after the other (h is not kept: a memory)."""
        out = object.__new__(cls)
        out.z = {L: torch.cat([p.z[L] for p in parts]) for L in parts[0].z}
        offsets = [0]
        for p in parts:
            offsets.append(offsets[-1] + p.shape[0])
        out.row = torch.cat([p.row + o for p, o in zip(parts, offsets)])
        out.col, out.judged = torch.cat([p.col for p in parts]), torch.cat([p.judged for p in parts])
        out.first, out.targets, out.h = None, None, None
        out.shape = (offsets[-1], max(p.shape[1] for p in parts))
        return out

    def any(self, fired: torch.Tensor) -> torch.Tensor:
        """(N,) bool at positions -> (B,): fired at any answer position of the prompt."""
        return torch.zeros(self.shape[0], dtype=torch.long).index_add_(0, self.row, (fired & self.judged).long()) > 0

    def spans(self) -> list[torch.Tensor]:
        """Each prompt's judged rows of `targets` / `h`: [(P_i,)]."""
        counts = torch.zeros(self.shape[0], dtype=torch.long).index_add_(0, self.row, self.judged.long())
        ends = counts.cumsum(0)
        return [torch.arange(int(e - c), int(e)) for c, e in zip(counts, ends)]


class Neurons(torch.nn.Module):
    """n patch neurons in the last FFN: pre-activation at every position (N, n) from Features, output
    relu(a) @ values (N, H)."""

    def __init__(self, kind: str, layer: int, answer_keys: torch.Tensor, subject_keys: torch.Tensor,
                 generator: torch.Generator | None = None, scale_init: float = 10.0):
        super().__init__()
        n, hidden = answer_keys.shape                                                 # (n, H)
        self.kind, self.layer = kind, layer
        self.answer = torch.nn.Parameter(answer_keys.clone())
        self.subject = torch.nn.Parameter(subject_keys.clone())
        self.bias = torch.nn.Parameter(torch.zeros(n))
        g = generator or torch.Generator().manual_seed(0)
        self.directions = torch.nn.Parameter(torch.randn(n, hidden, generator=g) / hidden ** 0.5)
        self.scales = torch.nn.Parameter(torch.full((n,), scale_init))

    @classmethod
    def start(cls, kind: str, layer: int, x: torch.Tensor, z_subject: torch.Tensor, generator) -> "Neurons":
        """Keys with pre-activation 1 on their own edit position: x (n, H) there, z_subject (H,)."""
        share = 0.5 if kind == "both" else 1.0
        unit = lambda v: share * v / v.pow(2).sum(-1, keepdim=True)                 # noqa: E731
        answer = unit(x) if kind != "subject" else torch.zeros_like(x)
        subject = unit(z_subject).expand_as(x) if kind != "answer" else torch.zeros_like(x)
        out = cls(kind, layer, answer, subject, generator)
        out.answer.requires_grad_(kind != "subject")       # a part a kind does not have stays zero
        out.subject.requires_grad_(kind != "answer")
        return out

    @classmethod
    def stack(cls, parts: list["Neurons"]) -> "Neurons":
        out = cls(parts[0].kind, parts[0].layer, torch.cat([p.answer for p in parts]).detach(),
                  torch.cat([p.subject for p in parts]).detach())
        with torch.no_grad():
            out.bias.copy_(torch.cat([p.bias for p in parts]))
            out.directions.copy_(torch.cat([p.directions for p in parts]))
            out.scales.copy_(torch.cat([p.scales for p in parts]))
        return out.requires_grad_(False)

    def preactivation(self, f: Features) -> torch.Tensor:
        a = self.bias + f.z[LAST] @ self.answer.t()                                    # (N, n)
        if self.kind != "answer":
            s = torch.full((*f.shape, len(self.bias)), float("-inf"))                  # (B, T, n)
            s = s.index_put((f.row, f.col), f.z[self.layer] @ self.subject.t())
            a = a + s.cummax(dim=1).values[f.row, f.col]                               # running max over p <= t
        return a

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.relu(a) @ (self.scales.unsqueeze(-1) * self.directions)           # (..., n) -> (..., H)


def edit_output(neurons: list[Neurons], f: Features) -> torch.Tensor:
    """(J, H): what the kept neurons add at f's judged positions."""
    out = torch.zeros(len(f.targets), f.z[LAST].shape[1])
    for nrn in neurons:
        out = out + nrn(nrn.preactivation(f)[f.judged])
    return out


def train(task, cfg: EditorConfig, kind: str, layer: int, kept: list[Neurons], edit: Features, memory: Features,
          subject_at: int, seed: int, keys_only: bool = False, steps: int = 300):
    """One edit's neurons, the editor's losses on cached features. -> (neurons, steps taken)."""
    spans = edit.spans()
    width = len(spans[0])
    base = (edit.h + edit_output(kept, edit)).detach()                                 # (J, H)
    with torch.no_grad():
        leads = task.leads(task.arch.tail(base), edit.targets).reshape(len(spans), width)   # (K, P)
    wrong = torch.tensor([0]) if keys_only else positions_to_patch(leads, cfg)         # (n,)
    at = edit.first.unsqueeze(1) + wrong                                                # (K, n) flat positions
    new = Neurons.start(kind, layer, edit.z[LAST][at[0]], edit.z[layer][subject_at],
                        torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(new.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    columns = torch.arange(len(wrong))
    step = 0
    for step in range(1, (steps if keys_only else cfg.max_steps) + 1):
        a = new.preactivation(edit)                                                     # (N, n)
        a_edit = a[at, columns]                                                         # (K, n)
        a_mem = new.preactivation(memory)                                               # (M, n)
        top = a_mem.topk(min(cfg.mem_topk, len(a_mem)), dim=0).values                   # (k, n)
        l_a = torch.exp(cfg.act_margin - a_edit).flatten()
        loss = cfg.alpha * l_a.topk(min(cfg.act_topk, len(l_a))).values.mean() + cfg.beta * (
            torch.exp(top.unsqueeze(0) - a_edit.unsqueeze(1) + cfg.m1).mean() + torch.exp(top - cfg.m2).mean())
        if not keys_only:
            logits = task.arch.tail(base + new(a[edit.judged]))                         # (J, V)
            loss = loss + task.edit_loss(logits, edit.targets, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(new.parameters(), cfg.grad_clip)
        opt.step()
        if not keys_only and step >= cfg.check_after and step % cfg.check_every == 0:
            with torch.no_grad():          # base already holds the kept neurons' output: no pass over them
                logits = task.arch.tail(base + new(new.preactivation(edit)[edit.judged]))
            if all(right_at(task, logits, edit)):
                break
    return new.requires_grad_(False), step


@torch.no_grad()
def logits_at(task, neurons: list[Neurons], f: Features) -> torch.Tensor:
    return task.arch.tail(f.h + edit_output(neurons, f))                               # (J, V)


def right_at(task, logits: torch.Tensor, f: Features) -> list[bool]:
    """Per prompt of f: every answer token top-1 in logits (J, V) at f's judged positions."""
    leads = task.leads(logits, f.targets)
    return [bool((leads[s] > 0).all()) for s in f.spans()]


@torch.no_grad()
def right(task, neurons: list[Neurons], f: Features) -> list[bool]:
    return right_at(task, logits_at(task, neurons, f), f)


@torch.no_grad()
def first_tokens(task, neurons: list[Neurons], f: Features) -> torch.Tensor:
    logits = logits_at(task, neurons, f)
    return logits[torch.tensor([int(s[0]) for s in f.spans()])].argmax(-1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-relation", type=int, default=5, help="edits per relation (the stream's first)")
    ap.add_argument("--sequential", type=int, default=0, help="the stream's first N mistakes one after the other")
    ap.add_argument("--kinds", default="answer,both", help="keys to compare: answer, subject, both")
    ap.add_argument("--layers", default="12", help="middle layers for the subject part")
    ap.add_argument("--memory-examples", type=int, default=3000)
    ap.add_argument("--sibling-negatives", type=int, default=0,
                    help="the edit's subject in the first N training templates of its other relations joins "
                         "the memory")
    ap.add_argument("--phrasings", type=int, default=EditorConfig().phrasings,
                    help="training wordings per edit (EditorConfig.phrasings; the memory covers as many)")
    ap.add_argument("--keys-only", action="store_true", help="keys alone (no value): firing only")
    ap.add_argument("--steps", type=int, default=300, help="--keys-only: steps per key")
    ap.add_argument("--subject-init", choices=("subject", "shared", "last"), default="subject",
                    help="the subject part starts from the subject's last token of the input (the record must name "
                         "the subject), from the last token of the longest text the input shares with all its training "
                         "phrasings, or from the input's last token")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfg = EditorConfig(phrasings=args.phrasings)
    layers = [int(x) for x in args.layers.split(",")]
    model, tokenizer = load_model(build("facts-smollm2", out=model_path("facts-smollm2"), progress=lambda m: None))
    model.eval().requires_grad_(False)
    task = task_for(adapter_for(model), tokenizer)
    split = split_facts(all_facts(), seed=0)
    by_id = {f.id: f for f in all_facts()}
    facts = list(by_id.values())
    memory_wordings = examples(memory_facts(split), "all", cfg.phrasings)
    random.Random(cfg.seed).shuffle(memory_wordings)
    memory_wordings = memory_wordings[: args.memory_examples]
    in_memory = {e.input for e in memory_wordings}
    stream = [r for r in read_records("data/errors/facts-smollm2.jsonl")
              if len(task.answer_ids(r.target)) <= cfg.max_neurons_per_edit]
    if args.sequential:
        picked = stream[: args.sequential]
    else:
        picked, count = [], {}
        for r in stream:
            relation = r.id.split(":")[0]
            if count.get(relation, 0) < args.per_relation:
                picked.append(r)
                count[relation] = count.get(relation, 0) + 1
    edited = {r.id for r in picked}
    others = [f for f in split["test"] if f.id not in edited]
    feats = lambda xs, h=True: Features(model, task, xs, sorted(set(layers) | {LAST}), h)   # noqa: E731
    start = time.perf_counter()
    memory = feats(memory_wordings, False)
    test = feats([e for e in examples(others, "all", 0) if e.input not in in_memory])
    per_edit = []
    for r in picked:
        fact = by_id[r.id]
        siblings = [e for f in by_id.values() if f.subject == fact.subject and f.relation != fact.relation
                    and f.id not in edited for e in examples([f], "all", 0) if e.input not in in_memory]
        negatives = [Example(t, r.target) for t in sibling_prompts(fact, facts, args.sibling_negatives)]
        per_edit.append({"record": r, "edit": feats([Example(w, r.target) for w in [r.input, *r.phrasings[: cfg.phrasings]]]),
                         "held": feats([Example(w, r.target) for w in r.rephrases]),
                         "siblings": feats(siblings) if siblings else None,
                         "negatives": feats(negatives, False) if negatives else None,
                         "subject_at": len(tokenizer(r.input)["input_ids"]) - 1 if args.subject_init == "last" else
                         subject_position(tokenizer, r.input, fact.subject if args.subject_init == "subject" else
                                          shared_text(r.input, r.phrasings[: cfg.phrasings]))})
    print(f"features: memory {memory.shape[0]} wordings, test {test.shape[0]}, {len(picked)} edits, "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    kinds = [(k, LAST if k == "answer" else L) for k in args.kinds.split(",") for L in (layers if k != "answer" else [LAST])]
    results = {}

    def save(name: str, rows: list[dict]) -> None:         # after every row: a run cut short keeps its rows
        results[name] = rows
        if args.out:
            with open(args.out, "w") as fh:
                json.dump({"model": "facts-smollm2", "args": vars(args), "settings": cfg.to_dict(),
                           "results": results}, fh, indent=1)
    for kind, layer in kinds:
        name = f"{kind} {layer}" if kind != "answer" else "answer"
        run = sequential if args.sequential else alone
        run(task, cfg, kind, layer, per_edit, memory, test, args, lambda rows: save(name, rows))
    return 0


def alone(task, cfg, kind, layer, per_edit, memory, test, args, save) -> None:
    """Each edit on the unpatched model; a row per edit, and a summary line."""
    rows = []
    test_before = first_tokens(task, [], test)
    for i, e in enumerate(per_edit):
        mem = Features.cat([memory, e["negatives"]]) if e["negatives"] is not None else memory
        t0 = time.perf_counter()
        new, steps = train(task, cfg, kind, layer, [], e["edit"], mem, e["subject_at"], cfg.seed + i,
                           args.keys_only, args.steps)
        held = e["held"]
        with torch.no_grad():
            fired = (new.preactivation(held)[held.first] > 0).any(-1).tolist()
            sib = e["siblings"]
            if args.keys_only:
                same = sib.any((new.preactivation(sib) > 0).any(-1)).logical_not().tolist() if sib else []
                kept = test.any((new.preactivation(test) > 0).any(-1)).logical_not().float().mean().item()
                gr = []
            else:
                same = (first_tokens(task, [new], sib) == first_tokens(task, [], sib)).tolist() if sib else []
                kept = (first_tokens(task, [new], test) == test_before).float().mean().item()
                gr = right(task, [new], held)
            trained = (new.preactivation(e["edit"])[e["edit"].first] > 0).all().item() if args.keys_only else \
                right(task, [new], e["edit"])[0]
        rows.append({"id": e["record"].id, "steps": steps, "right": trained,
                     "held_out_right": gr, "held_out_fire": fired, "same_subject_unchanged": same,
                     "test_unchanged": kept, "seconds": time.perf_counter() - t0})
        print(f"  {kind} {layer} {e['record'].id}: steps {steps} held-out right {gr} fire {fired} "
              f"same subject {sum(same)}/{len(same)} test {kept:.3f}", file=sys.stderr, flush=True)
        save(rows)
    summary(f"{kind} {layer}", rows, args.keys_only)


def summary(name: str, rows: list[dict], keys_only: bool) -> None:
    flat = lambda k: [x for r in rows for x in r[k]]                                   # noqa: E731
    mean = lambda xs: f"{statistics.mean(xs):.3f}" if xs else "-"                     # noqa: E731
    by_relation = {}
    for r in rows:
        by_relation.setdefault(r["id"].split(":")[0], []).extend(r["held_out_fire" if keys_only else "held_out_right"])
    print(f"| {name} | {len(rows)} | {mean([r['right'] for r in rows])} | {mean(flat('held_out_right'))} | "
          f"{mean(flat('held_out_fire'))} | " + ", ".join(f"{k} {mean(v)}" for k, v in sorted(by_relation.items())) +
          f" | {mean(flat('same_subject_unchanged'))} of {len(flat('same_subject_unchanged'))} | "
          f"{mean([r['test_unchanged'] for r in rows])} | {statistics.median(r['steps'] for r in rows)} |", flush=True)


def sequential(task, cfg, kind, layer, per_edit, memory, test, args, save) -> None:
    """The edits one after the other, every neuron kept; a row at each checkpoint."""
    kept, done, rows, steps = [], [], [], []
    test_before = first_tokens(task, [], test)
    sib_sets = [e["siblings"] for e in per_edit if e["siblings"] is not None]
    sib_before = [first_tokens(task, [], s) for s in sib_sets]
    checkpoints = {n for n in (10, 25, 50, 100, 200, 300, 400, 523) if n <= len(per_edit)} | {len(per_edit)}
    t0 = time.perf_counter()
    for i, e in enumerate(per_edit):
        memory = Features.cat([memory, *([e["negatives"]] if e["negatives"] is not None else [])])
        new, n = train(task, cfg, kind, layer, kept, e["edit"], memory, e["subject_at"], cfg.seed + i)
        ok = right(task, [*kept, new], e["edit"])[0]
        kept.append(new)
        memory = Features.cat([memory, e["edit"]])
        done.append((e, ok))
        steps.append(n)
        print(f"  edit {i + 1} {e['record'].id} right={ok} steps={n}", file=sys.stderr, flush=True)
        if i + 1 in checkpoints:
            every = [Neurons.stack(kept)]
            er = [right(task, every, d["edit"])[0] for d, _ in done]
            gr = [x for d, _ in done for x in right(task, every, d["held"])]
            same = torch.cat([first_tokens(task, every, s) == b for s, b in zip(sib_sets, sib_before)]).float()
            row = {"edits": i + 1, "SR": statistics.mean(ok for _, ok in done), "ER": statistics.mean(er),
                   "GR": statistics.mean(gr), "test_unchanged": (first_tokens(task, every, test) == test_before)
                   .float().mean().item(), "same_subject_unchanged": same.mean().item(), "siblings": len(same),
                   "neurons": sum(len(k.bias) for k in kept), "steps_median": statistics.median(steps),
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"| {kind} {layer} | {row['edits']} | {row['SR']:.3f} | {row['ER']:.3f} | {row['GR']:.3f} | "
                  f"{row['test_unchanged']:.3f} | {row['same_subject_unchanged']:.3f} of {row['siblings']} | "
                  f"{row['neurons']} | {row['steps_median']} | {row['seconds']:.0f} |", flush=True)
            save(rows)


if __name__ == "__main__":
    sys.exit(main())
