"""How far does the unedited model's own knowledge carry across wordings? A reference for Generality (GR).

    .venv/bin/python bench/consistency.py --model facts-smollm2

For every fact of the bank (generation: the fact's answer; classification: its true and false claim) that
the model gets right in the edit prompt's wording, the share it also gets right in the held-out rephrasings
(the wordings GR is measured on) and in the training phrasings. An edit whose rephrasings are all right
generalizes better than the model's own knowledge does when this share is low. Prints a Markdown table per
relation and writes Markdown + JSON to --out-dir (default docs/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from patcher import Editor, EditorConfig  # noqa: E402
from patcher.engine.examples import Example  # noqa: E402
from patcher.facts import all_facts  # noqa: E402
from patcher.facts.claims import claims  # noqa: E402
from patcher.models.base import load_model  # noqa: E402
from patcher.models.production import build, model_path  # noqa: E402


def items(model_name: str) -> list[tuple[str, Example, list[Example], list[Example]]]:
    """(relation, prompt, held-out rephrasings, training phrasings) per fact (LM) or claim (classifier)."""
    facts = all_facts()
    if model_name == "facts-smollm2":
        return [(f.relation, Example(f.prompt, f.answer), [Example(r, f.answer) for r in f.rephrases],
                 [Example(p, f.answer) for p in f.phrasings]) for f in facts]
    return [(c.fact.relation, Example(c.text, c.label), [Example(r, c.label) for r in c.rephrases],
             [Example(p, c.label) for p in c.phrasings]) for c in claims(facts)]


def right(editor: Editor, examples: list[Example]) -> list[bool]:
    return [editor.judge(c)[0] for c in editor.cache(examples)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="facts-smollm2", choices=["factcheck-minilm", "facts-smollm2"])
    ap.add_argument("--out-dir", default="docs/results")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = ap.parse_args()
    start = time.perf_counter()
    model, tokenizer = load_model(build(args.model, out=model_path(args.model), progress=lambda m: None))
    editor = Editor(model, tokenizer, EditorConfig(threads=args.threads))
    torch.set_num_threads(args.threads)
    everything = items(args.model)
    known = right(editor, [prompt for _, prompt, _, _ in everything])
    kept = [x for x, ok in zip(everything, known) if ok]
    held_out = right(editor, [e for _, _, rephrases, _ in kept for e in rephrases])
    trained = right(editor, [e for _, _, _, phrasings in kept for e in phrasings])
    rows, h, t = {}, iter(held_out), iter(trained)
    for (relation, _, rephrases, phrasings), ok in zip(everything, known):
        row = rows.setdefault(relation, {"items": 0, "right_in_prompt": 0, "held_out": [], "trained": []})
        row["items"] += 1
        if ok:
            row["right_in_prompt"] += 1
            row["held_out"] += [next(h) for _ in rephrases]
            row["trained"] += [next(t) for _ in phrasings]
    rows["all"] = {"items": len(everything), "right_in_prompt": len(kept), "held_out": held_out, "trained": trained}

    def share(xs):
        return f"{statistics.mean(xs):.2f}" if xs else "n/a"

    unit = "facts" if args.model == "facts-smollm2" else "claims"
    lines = [f"### {args.model}: the unedited model's own consistency across wordings", "",
             f"`.venv/bin/python bench/consistency.py --model {args.model}` ({time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, torch {torch.__version__}, "
             f"{time.perf_counter() - start:.0f} s). Every {unit[:-1]} of the fact bank the model gets right in "
             "the edit prompt's wording: how often it is also right in the held-out rephrasings (the wordings GR "
             "is measured on) and in the training phrasings, judged as edits are (every answer token top-1, "
             "teacher-forced; the classifier's label).", "",
             f"| relation | {unit} | right in the prompt | of those: held-out rephrasings right | "
             "training phrasings right |", "|---|---|---|---|---|"]
    for relation, row in sorted(rows.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        lines.append(f"| {relation} | {row['items']} | {row['right_in_prompt']} | {share(row['held_out'])} | "
                     f"{share(row['trained'])} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"consistency_{args.model}.md").write_text(text)
    summary = {r: {"items": v["items"], "right_in_prompt": v["right_in_prompt"],
                   "held_out_right": statistics.mean(v["held_out"]) if v["held_out"] else None,
                   "trained_right": statistics.mean(v["trained"]) if v["trained"] else None}
               for r, v in rows.items()}
    (out / f"consistency_{args.model}.json").write_text(json.dumps({"model": args.model, "rows": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
