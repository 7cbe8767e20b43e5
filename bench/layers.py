"""Would a patch in an earlier FFN layer generalize better? Transformer-Patcher neurons trained in decoder layer
L of facts-smollm2 (the editor only patches the last), each edit alone on the unpatched model.

    .venv/bin/python bench/layers.py --layers 25,29 --per-relation 5

The editor's fast path needs the patch in the last FFN (everything after it is per position); here the
neurons sit in layer L as a branch (patcher.patch.PatchBranch) and every training step runs the whole model,
so this is a measurement, not an editing mode. Same losses, margins, memory (the train split's wordings, at
layer L) and training phrasings as the editor's defaults, at most --max-steps steps; the edit stops once the
input and its training phrasings are right. Per layer: SR, GR (the held-out rephrasings right after the
edit) by relation, and the share of the test facts' first-token predictions left unchanged. Prints a
Markdown table; --out writes JSON.
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
from patcher.arch import adapter_for  # noqa: E402
from patcher.editor import NewNeurons, patch_loss, positions_to_patch  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.mistakes import examples  # noqa: E402
from patcher.memory import Memory  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402
from patcher.patch import PatchBranch  # noqa: E402
from patcher.records import read_records  # noqa: E402
from patcher.sequential import memory_facts  # noqa: E402
from patcher.tasks import Example, task_for  # noqa: E402


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


def edit(task, cfg: EditorConfig, memory: Memory, record, seed: int):
    """Train one edit's neurons at the adapter's layer. -> (right, steps, branch) with the branch attached."""
    wordings = [Example(w, record.target) for w in [record.input, *record.phrasings[: cfg.phrasings]]]
    with torch.no_grad():
        seen = {}
        probe = task.arch.ffn_in.register_forward_pre_hook(lambda m, a: seen.__setitem__("q", a[0]))
        logits, positions, targets = run(task, wordings)
        probe.remove()
    wrong = positions_to_patch(torch.stack([task.leads(x, t) for x, t in zip(logits, targets)]), cfg)   # (n,)
    q_edit = seen["q"][0, positions[0][wrong]]                                           # (n, H)
    new = NewNeurons(q_edit, "relu", cfg.value_scale_init, torch.Generator().manual_seed(seed))
    trainee = Trainee(new)
    branch = PatchBranch(task.arch, trainee)
    opt = torch.optim.Adam(new.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    columns = torch.arange(len(wrong))
    step = 0
    for step in range(1, cfg.max_steps + 1):
        logits, positions, targets = run(task, wordings)
        edit_loss = sum(task.edit_loss(x, t, cfg) for x, t in zip(logits, targets)) / len(wordings)
        a_edit = torch.stack([trainee.a[i, p[wrong], columns] for i, p in enumerate(positions)])   # (K, n)
        loss, _ = patch_loss(cfg, edit_loss, a_edit, memory, new)
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
        before = first_tokens(task, locality)
        rows = []
        for i, r in enumerate(picked):
            if len(task.answer_ids(r.target)) > cfg.max_neurons_per_edit:
                continue                                  # the editor does not train these either
            start = time.perf_counter()
            ok, steps, branch = edit(task, cfg, memory, r, cfg.seed + i)
            held = right(task, [Example(w, r.target) for w in r.rephrases])
            kept = statistics.mean(a == b for a, b in zip(first_tokens(task, locality), before))
            branch.remove()
            rows.append({"id": r.id, "relation": r.id.split(":")[0], "right": ok, "steps": steps,
                         "held_out_right": held, "locality_unchanged": kept,
                         "seconds": time.perf_counter() - start})
            print(f"  layer {layer} {r.id} right={ok} steps={steps} held-out={held} locality={kept:.3f}",
                  file=sys.stderr)
        results[layer] = rows
        report(results, args.out, cfg)
    return 0


def report(results: dict, out: str, cfg: EditorConfig) -> None:
    relations = sorted({row["relation"] for rows in results.values() for row in rows})
    lines = ["| layer | edits | SR | GR | " + " | ".join(f"GR {r}" for r in relations) +
             " | locality unchanged (mean, min) | steps median |", "|" + "---|" * (6 + len(relations))]
    for layer, rows in results.items():
        gr = lambda rs: statistics.mean(x for row in rs for x in row["held_out_right"])  # noqa: E731
        by = [f"{gr([row for row in rows if row['relation'] == rel]):.2f}" for rel in relations]
        kept = [row["locality_unchanged"] for row in rows]
        lines.append(f"| {layer} | {len(rows)} | {statistics.mean(row['right'] for row in rows):.2f} | "
                     f"{gr(rows):.3f} | " + " | ".join(by) + f" | {statistics.mean(kept):.4f}, {min(kept):.3f} | "
                     f"{statistics.median(row['steps'] for row in rows)} |")
    print("\n".join(lines), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump({"model": "facts-smollm2", "settings": cfg.to_dict(), "layers": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
