"""Why rephrasings fail: for each edit, do its new neurons fire on the held-out rephrasings at all (key side),
and when they fire, does the answer flip (value side)? Per relation, on a production model's real mistakes.

    .venv/bin/python bench/generality.py --model facts-smollm2 --per-relation 10 [--set key=value]

Each edit is made alone on the unpatched model (the neurons and the memory are reset after it), so the
figures isolate generalization from sequential interference. For every rephrasing of every edit: the
pre-activation of each new neuron at its own answer position (the neuron fires when it is > 0), whether the
rephrasing is right after the edit, and the same for the training phrasings. Prints a Markdown table and
writes JSON to --out (default: none).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from patcher import EditorConfig  # noqa: E402
from patcher.engine.examples import Example  # noqa: E402
from patcher.engine.memory import Memory  # noqa: E402
from patcher.engine.records import read_records  # noqa: E402
from patcher.engine.sequential import build_editor  # noqa: E402
from patcher.facts import all_facts, split_facts  # noqa: E402
from patcher.facts.sets import fact_examples  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402
from patcher.pipeline.catalog import Catalog  # noqa: E402
from patcher.pipeline.settings import PipelineSettings  # noqa: E402


def firing(editor, positions: torch.Tensor, neurons, texts: list[str], target: str, subject: str | None) -> list[dict]:
    """Per text: each new neuron's pre-activation at its answer position, whether the text is right, and whether
    it starts with the subject (where SmolLM2's middle layers hardly tell one first word from another)."""
    out = []
    for text, c in zip(texts, editor.cache([Example(t, target) for t in texts])):
        a = neurons.preactivation(c.q, c.z, c.at)[positions, torch.arange(len(positions))]   # (n,) own position
        out.append({"preactivations": a.tolist(), "fires": bool((a > 0).all()), "right": editor.judge(c)[0],
                    "subject_first": bool(subject) and text.startswith(subject)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="facts-smollm2", choices=["factcheck-minilm", "facts-smollm2"])
    ap.add_argument("--per-relation", type=int, default=10, help="edits per relation (the stream's first)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="EditorConfig override")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    config = EditorConfig(**{**PipelineSettings.load().train.editor_overrides(Catalog().entry(args.model)),
                             **EditorConfig.parse_overrides(args.set)})
    model, tokenizer = load_model(build(args.model, out=model_path(args.model), progress=lambda m: None))
    facts = all_facts()
    subjects = {f.id: f.subject for f in facts}
    split = split_facts(facts, seed=0)
    sets = fact_examples("generation" if args.model == "facts-smollm2" else "classification", split, config.seed,
                         training_wordings=config.phrasings)
    editor = build_editor(model, tokenizer, config, sets["memory"], sets["validation"])
    memory = (editor.memory.vectors, editor.memory.z, editor.memory.lengths)   # rows there never change: restored below
    picked, count = [], {}
    for r in read_records(f"data/errors/{args.model}.jsonl"):
        relation = r.id.split(":")[0]
        if count.get(relation, 0) < args.per_relation:
            picked.append(r)
            count[relation] = count.get(relation, 0) + 1
    rows = []
    for r in picked:
        trained = list(r.phrasings)[: config.phrasings]
        positions = editor.neuron_positions(editor.cache([Example(r.input, r.target)])[0],
                                            editor.cache([Example(p, r.target) for p in trained]))
        outcome = editor.edit(r.id, r.input, r.target, r.rephrases, r.phrasings, negatives=r.negatives)
        if outcome.status == "edited":
            new = editor.neurons                                 # this edit's neurons only (reset below)
            rows.append({"id": r.id, "relation": r.id.split(":")[0], "steps": outcome.steps,
                         "held_out": firing(editor, positions, new, r.rephrases, r.target, subjects.get(r.id)),
                         "trained": firing(editor, positions, new, trained, r.target, subjects.get(r.id))})
            editor.remove(r.id)
        editor.edited.pop(r.id, None)
        editor.memory = Memory(*memory)
        print(f"  {r.id} {outcome.status}", file=sys.stderr)
    lines = ["| relation | edits | held-out right | held-out fire | right when fired | right when not fired | "
             "held-out pre-act median | trained right | trained fire | held-out right: subject first / elsewhere |",
             "|" + "---|" * 10]
    for relation in [*sorted({r["relation"] for r in rows}), "all"]:
        mine = [r for r in rows if relation in ("all", r["relation"])]
        h = [x for r in mine for x in r["held_out"]]
        t = [x for r in mine for x in r["trained"]]
        fired = [x for x in h if x["fires"]]
        quiet = [x for x in h if not x["fires"]]
        share = lambda xs, key: f"{sum(x[key] for x in xs) / len(xs):.2f}" if xs else "n/a"   # noqa: E731
        lines.append(f"| {relation} | {len(mine)} | {share(h, 'right')} | "
                     f"{share(h, 'fires')} | {share(fired, 'right')} | {share(quiet, 'right')} | "
                     f"{statistics.median(min(x['preactivations']) for x in h):.2f} | {share(t, 'right')} | "
                     f"{share(t, 'fires')} | {share([x for x in h if x['subject_first']], 'right')} / "
                     f"{share([x for x in h if not x['subject_first']], 'right')} |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "settings": config.to_dict(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
