"""Would a patch in an earlier FFN layer generalize better? Transformer-Patcher neurons trained in decoder layer
L of facts-smollm2 (the editor only patches the last), each edit alone on the unpatched model.

    .venv/bin/python bench/layers.py --layers 25,29 --per-relation 5
    .venv/bin/python bench/layers.py --layers 12 --per-relation 2 --key-at subject --kl 1 --kl-on siblings
    .venv/bin/python bench/layers.py --layers 12 --key-at subject --kl 1 --kl-on siblings --sequential 50

The editor's fast path needs the patch in the last FFN (everything after it is per position); here the
neurons sit in layer L as a branch (patcher.engine.patch.PatchBranch) and every training step runs the whole model,
so this is a measurement, not an editing mode. Same losses, margins, memory (the train split's wordings, at
layer L) and training phrasings as the editor's defaults, at most --max-steps steps; the edit stops once the
input and its training phrasings are right. `--key-at subject` keys one neuron at the subject's last token of
each wording (where ROME-style analyses find a fact recalled) instead of the answer positions; `--kl` adds a
KL term keeping the next token after other prompts about the subject. Per layer: SR, GR (the held-out
rephrasings right after the edit) by relation, the share of the test facts' first-token predictions left
unchanged and the same for the bank's other facts about the edited subject (their prompt wording).
Prints a Markdown table; --out writes JSON. `--sequential N` makes the stream's first N mistakes one after
the other instead (every neuron kept, each edit's wordings joining the memory: exact, as the layer's FFN
input does not depend on the layer's own patch) and prints SR, ER, GR and both localities at checkpoints.
"""
from __future__ import annotations

import argparse
import copy
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
from patcher.engine.editor import NewNeurons, patch_loss, positions_to_patch  # noqa: E402
from patcher.engine.examples import Example  # noqa: E402
from patcher.engine.memory import Memory, TopRows  # noqa: E402
from patcher.engine.patch import PatchBranch  # noqa: E402
from patcher.engine.records import read_records  # noqa: E402
from patcher.engine.subject import subject_position  # noqa: E402
from patcher.engine.tasks import task_for  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.mistakes import examples  # noqa: E402
from patcher.facts.sets import memory_facts  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402


def layer_adapter(model, layer: int):
    """The model's adapter with the FFN of decoder layer `layer` in place of the last one."""
    arch = copy.copy(adapter_for(model))
    arch.ffn_in = model.model.layers[layer].mlp
    arch.ffn_out = model.model.layers[layer].mlp.down_proj
    return arch


class Trainee(torch.nn.Module):
    """The branch while training: the new neurons, remembering their pre-activations for the losses."""

    def __init__(self, new: NewNeurons):
        super().__init__()
        self.new, self.a = new, None

    def forward(self, q):                                  # (B, T, H) -> (B, T, H)
        self.a = self.new.preactivation(q)                 # (B, T, n)
        return self.new(q)


def run(task, examples_):
    """Whole-model logits at the judged positions, per example: [(P, V)], and the judged positions."""
    inputs, positions, targets, _ = task.encode(examples_)
    logits = task.arch.model(**inputs).logits
    return [logits[i, p] for i, p in enumerate(positions)], positions, targets


@torch.no_grad()
def right(task, examples_) -> list[bool]:
    logits, _, targets = run(task, examples_)
    return [bool((task.leads(x, t) > 0).all()) for x, t in zip(logits, targets)]


@torch.no_grad()
def first_tokens(task, examples_, batch=32) -> list[int]:
    out = []
    for s in range(0, len(examples_), batch):
        out += [int(x[0].argmax()) for x in run(task, examples_[s:s + batch])[0]]
    return out


ESSENCE = ["{s} is", "{s} is known for", "{s}'s", "Here is a fact about {s}:", "{s} has"]


def next_token_logprobs(task, texts: list[str]) -> torch.Tensor:
    """(B, V) log-probabilities of the token after each text (whole model, as the branch stands)."""
    ids, mask = task._pad([task.tokenizer(t)["input_ids"] for t in texts])
    logits = task.arch.model(input_ids=ids, attention_mask=mask).logits
    return logits[torch.arange(len(texts)), mask.sum(1) - 1].log_softmax(-1)


def prompts_about(fact, by_subject: dict, kind: str, wordings: int = 3) -> list[str]:
    """Prompts whose next token a subject-keyed edit must keep: generic ones about the subject ("essence"),
    the bank's training wordings of the subject's other relations ("siblings"; never their measured prompt
    wording), or both."""
    from patcher.facts.bank import TRAINING_TEMPLATES
    essence = [t.format(s=fact.subject) for t in ESSENCE]
    siblings = [t.format(s=fact.subject) for rel in sorted(by_subject.get(fact.subject, set()) - {fact.relation})
                for t in TRAINING_TEMPLATES[rel][:wordings]]
    return {"essence": essence, "siblings": siblings, "both": essence + siblings}[kind]


def training_wordings(record, cfg: EditorConfig) -> list[Example]:
    """The edit input and the training phrasings the editor would use."""
    return [Example(w, record.target) for w in [record.input, *record.phrasings[: cfg.phrasings]]]


def edit(task, cfg: EditorConfig, memory: Memory, record, seed: int, subject: str | None = None,
         kl: float = 0.0, kept_prompts: list[str] = ()):
    """Train one edit's neurons at the adapter's layer, keyed at the answer positions (the editor's way) or,
    given the fact's subject, one neuron keyed at the subject's last token of every wording (with a KL term
    of weight `kl` on the next token after `kept_prompts`).
    -> (right, steps, branch) with the branch attached."""
    wordings = training_wordings(record, cfg)
    with torch.no_grad():
        seen = {}
        probe = task.arch.ffn_in.register_forward_pre_hook(lambda m, a: seen.__setitem__("q", a[0]))
        logits, positions, targets = run(task, wordings)
        probe.remove()
    if subject is None:
        wrong = positions_to_patch(torch.stack([task.leads(x, t) for x, t in zip(logits, targets)]), cfg)   # (n,)
    else:       # the key sits at the subject; the edit loss still judges the answer
        positions = [torch.tensor([subject_position(task.tokenizer, w.input, subject)]) for w in wordings]
        wrong = torch.tensor([0])
    q_edit = seen["q"][0, positions[0][wrong]]                                           # (n, H)
    kept = list(kept_prompts) if subject is not None and kl > 0 else []
    if kept:
        with torch.no_grad():
            kept_before = next_token_logprobs(task, kept)                                # (E, V)
    new = NewNeurons(q_edit, "relu", cfg.value_scale_init, torch.Generator().manual_seed(seed))
    trainee = Trainee(new)
    branch = PatchBranch(task.arch, trainee)
    opt = torch.optim.Adam(new.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    columns = torch.arange(len(wrong))
    step = 0
    for step in range(1, cfg.max_steps + 1):
        logits, _, targets = run(task, wordings)
        edit_loss = sum(task.edit_loss(x, t, cfg) for x, t in zip(logits, targets)) / len(wordings)
        a_edit = torch.stack([trainee.a[i, p[wrong], columns] for i, p in enumerate(positions)])   # (K, n)
        loss, _ = patch_loss(cfg, edit_loss, a_edit, TopRows(memory, cfg.mem_topk, cfg.memory_search), new)
        if kept:       # the subject's other knowledge must not move: KL(before || now) of the next token
            now = next_token_logprobs(task, kept)
            loss = loss + kl * (kept_before.exp() * (kept_before - now)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(new.parameters(), cfg.grad_clip)
        opt.step()
        if step >= cfg.check_after and step % cfg.check_every == 0 and all(right(task, wordings)):
            break
    return all(right(task, wordings[:1])), step, branch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="25,29", help="decoder layers to patch (SmolLM2-135M has 30: 0..29)")
    ap.add_argument("--per-relation", type=int, default=5, help="edits per relation (the stream's first)")
    ap.add_argument("--memory-examples", type=int, default=3000, help="memory wordings sampled (seeded)")
    ap.add_argument("--locality", type=int, default=100, help="test facts whose first token must not move")
    ap.add_argument("--max-steps", type=int, default=300, help="step limit per edit (every step runs the model)")
    ap.add_argument("--key-at", choices=("answer", "subject"), default="answer",
                    help="answer: neurons keyed at the wrong answer positions (the editor's way); subject: one neuron "
                         "keyed at the subject's last token of each wording (where a fact is recalled)")
    ap.add_argument("--kl", type=float, default=0.0,
                    help="with --key-at subject: weight of a KL term keeping the next token after prompts about "
                         "the subject (--kl-on) as it was before the edit")
    ap.add_argument("--kl-on", choices=("essence", "siblings", "both"), default="essence",
                    help="the prompts of the KL term: generic ones about the subject, the bank's training wordings "
                         "of the subject's other relations, or both")
    ap.add_argument("--sequential", type=int, default=0,
                    help="instead: the stream's first N mistakes as sequential edits (neurons kept, each edit's "
                         "wordings joining the memory); ER, GR, locality at checkpoints")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfg = EditorConfig(max_steps=args.max_steps)
    torch.set_num_threads(1)
    model, tokenizer = load_model(build("facts-smollm2", out=model_path("facts-smollm2"), progress=lambda m: None))
    model.eval().requires_grad_(False)
    split = split_facts(all_facts(), seed=0)
    wordings = examples(memory_facts(split), "all", cfg.phrasings)   # the editor's memory facts (TrainR kept apart)
    random.Random(cfg.seed).shuffle(wordings)
    locality = examples(split["test"], "prompt")[: args.locality]
    by_id = {f.id: f for f in all_facts()}
    by_subject = {}
    for f in by_id.values():
        by_subject.setdefault(f.subject, set()).add(f.relation)

    def edit_record(task, memory, record, seed):
        fact = by_id[record.id]
        return edit(task, cfg, memory, record, seed, fact.subject if args.key_at == "subject" else None, args.kl,
                    prompts_about(fact, by_subject, args.kl_on))
    picked, count = [], {}
    for r in read_records("data/errors/facts-smollm2.jsonl"):
        relation = r.id.split(":")[0]
        if count.get(relation, 0) < args.per_relation:
            picked.append(r)
            count[relation] = count.get(relation, 0) + 1
    results = {}
    for layer in [int(x) for x in args.layers.split(",")]:
        task = task_for(layer_adapter(model, layer), tokenizer)
        memory = Memory.from_examples(task, wordings[: args.memory_examples])
        if args.sequential:
            stream = [r for r in read_records("data/errors/facts-smollm2.jsonl")
                      if len(task.answer_ids(r.target)) <= cfg.max_neurons_per_edit][: args.sequential]
            sequential(task, cfg, memory, stream, by_id, locality, edit_record)
            continue
        before = first_tokens(task, locality)
        rows = results[layer] = []
        for i, r in enumerate(picked):
            if len(task.answer_ids(r.target)) > cfg.max_neurons_per_edit:
                continue                                  # the editor does not train these either
            start = time.perf_counter()
            fact = by_id[r.id]
            siblings = [Example(f.prompt, f.answer) for f in by_id.values()
                        if f.subject == fact.subject and f.relation != fact.relation]
            siblings_before = first_tokens(task, siblings)
            ok, steps, branch = edit_record(task, memory, r, cfg.seed + i)
            held = right(task, [Example(w, r.target) for w in r.rephrases])
            kept = statistics.mean(a == b for a, b in zip(first_tokens(task, locality), before))
            same_subject = [a == b for a, b in zip(first_tokens(task, siblings), siblings_before)]
            branch.remove()
            rows.append({"id": r.id, "relation": r.id.split(":")[0], "right": ok, "steps": steps,
                         "held_out_right": held, "locality_unchanged": kept, "same_subject_unchanged": same_subject,
                         "seconds": time.perf_counter() - start})
            print(f"  layer {layer} {r.id} right={ok} steps={steps} held-out={held} locality={kept:.3f} "
                  f"same-subject={same_subject}",
                  file=sys.stderr)
            save(results, args.out, cfg)                  # after every edit: a run cut short keeps its rows
        report(results)
    return 0


def sequential(task, cfg: EditorConfig, memory: Memory, stream, by_id, locality, edit_record) -> None:
    """The stream as sequential edits at the adapter's layer; prints a row at each checkpoint."""
    edited = {r.id for r in stream}                 # a sibling that is itself edited is meant to move
    subjects = {by_id[r.id].subject for r in stream}
    siblings = [Example(f.prompt, f.answer) for f in by_id.values() if f.subject in subjects and f.id not in edited]
    before, siblings_before = first_tokens(task, locality), first_tokens(task, siblings)
    checkpoints = {n for n in (10, 25, 50, 100, 200, 300, 400, 523) if n <= len(stream)} | {len(stream)}
    print("| edits | SR | ER | GR | test facts unchanged | same subject, other relations unchanged | steps median |"
          "\n|---|---|---|---|---|---|---|", flush=True)
    done, steps = [], []
    for i, r in enumerate(stream):
        ok, n, _ = edit_record(task, memory, r, cfg.seed + i)
        memory.append(torch.cat([c.q_memory for c in task.cache(training_wordings(r, cfg))]))
        done.append((r, ok))
        steps.append(n)
        print(f"  edit {i + 1} {r.id} right={ok} steps={n}", file=sys.stderr, flush=True)
        if i + 1 in checkpoints:
            er = right(task, [Example(x.input, x.target) for x, _ in done])
            gr = [h for x, _ in done for h in right(task, [Example(w, x.target) for w in x.rephrases])]
            kept = statistics.mean(a == b for a, b in zip(first_tokens(task, locality), before))
            same = statistics.mean(a == b for a, b in zip(first_tokens(task, siblings), siblings_before))
            print(f"| {i + 1} | {statistics.mean(ok for _, ok in done):.3f} | {statistics.mean(er):.3f} | "
                  f"{statistics.mean(gr):.3f} | {kept:.3f} | {same:.3f} of {len(siblings)} | "
                  f"{statistics.median(steps)} |", flush=True)


def save(results: dict, out: str, cfg: EditorConfig) -> None:
    if out:
        with open(out, "w") as f:
            json.dump({"model": "facts-smollm2", "settings": cfg.to_dict(), "layers": results}, f, indent=1)


def report(results: dict) -> None:
    relations = sorted({row["relation"] for rows in results.values() for row in rows})
    lines = ["| layer | edits | SR | GR | " + " | ".join(f"GR {r}" for r in relations) +
             " | locality unchanged (mean, min) | same subject, other relations unchanged | steps median |",
             "|" + "---|" * (7 + len(relations))]
    for layer, rows in results.items():
        gr = lambda rs: statistics.mean(x for row in rs for x in row["held_out_right"])  # noqa: E731
        by = [f"{gr([row for row in rows if row['relation'] == rel]):.2f}" for rel in relations]
        kept = [row["locality_unchanged"] for row in rows]
        siblings = [x for row in rows for x in row.get("same_subject_unchanged", [])]
        same = f"{statistics.mean(siblings):.3f} of {len(siblings)}" if siblings else "-"
        lines.append(f"| {layer} | {len(rows)} | {statistics.mean(row['right'] for row in rows):.2f} | "
                     f"{gr(rows):.3f} | " + " | ".join(by) + f" | {statistics.mean(kept):.4f}, {min(kept):.3f} | {same} | "
                     f"{statistics.median(row['steps'] for row in rows)} |")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
